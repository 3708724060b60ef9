"""The device side of bench/fleet_load.py: simulated devices, run in worker processes.

Each worker process runs a Fleet: its share of the devices (every --procs-th
one, so each worker's ramp covers the whole interval), one event loop, and a
command loop on a pipe from fleet_load.py, which merges the workers' figures.
Split because one Python process with 10,000 TLS devices lagged 885 ms at
p99 (its own event loop), which the PubAck figures then included.

Devices are raw asyncio NATS connections, not nats-py ones: a nats-py client
costs three tasks, a flusher and futures per request, and 10,000 of them
spend the generator's one core before the server is loaded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.pb import protocol_pb2 as pb  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None

DEFAULT_PING_INTERVAL = 5  # the firmware's
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_PUB_ACK_TIMEOUT = 30.0  # the firmware's
SUBSCRIBE_ATTEMPTS = 3
# The firmware's backoffs: NATS reconnects (firmware/lib/nats.py reconnect_*_ms)
# and a reading's or request's retries (firmware/app/device.py RETRY_*_MS).
# The bench's former caps (4 s for a dial, 1 s for a publish) made 10,000
# devices a herd at a restarted server that no fleet of ours makes.
RECONNECT_MIN, RECONNECT_MAX = 0.25, 30.0
RETRY_MIN, RETRY_MAX = 0.5, 30.0


def backoff_s(delay: float) -> float:
    """The firmware's sleep for `delay`: half of it, plus up to the other half."""
    return delay / 2 + random.random() * delay / 2
CLUSTER = "test-cluster"


class Wire(asyncio.Protocol):
    """Just enough NATS client protocol for a device: PUB, SUB, MSG/HMSG, PING."""

    def __init__(self, dev: Device):
        self.dev = dev
        self.transport = None
        self.buf = bytearray()
        self.info = asyncio.get_running_loop().create_future()
        self.pong = asyncio.get_running_loop().create_future()
        for f in (self.info, self.pong):  # a late loss nobody awaits is no news
            f.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.closed = asyncio.Event()
        self.error = ""

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed.set()
        for f in (self.info, self.pong):
            if not f.done():
                f.set_exception(ConnectionError(self.error or "connection lost"))

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def pub(self, subject: str, data: bytes, reply: str = "") -> None:
        self.send(f"PUB {subject} {reply} {len(data)}\r\n".encode() + data + b"\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                return
            line = bytes(buf[:i])
            op = line[:4]
            if op in (b"MSG ", b"HMSG"):
                args = line.split(b" ")
                hmsg = op == b"HMSG"
                size = int(args[-1])
                if len(buf) < i + 2 + size + 2:
                    return
                payload = bytes(buf[i + 2:i + 2 + size])
                del buf[:i + 2 + size + 2]
                reply = args[3].decode() if len(args) == (6 if hmsg else 5) else ""
                if hmsg:  # only the no-responders status matters here
                    hlen = int(args[-2])
                    status = payload[:hlen]
                    payload = payload[hlen:]
                    if b" 503" in status.split(b"\r\n", 1)[0]:
                        payload = None
                self.dev.on_msg(args[1].decode(), reply, payload)
                continue
            del buf[:i + 2]
            if line.startswith(b"PING"):
                self.send(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                if not self.pong.done():
                    self.pong.set_result(True)
            elif line.startswith(b"INFO"):
                if not self.info.done():
                    self.info.set_result(json.loads(line[5:]))
            elif line.startswith(b"-ERR"):
                self.error = line.decode()


class Device:
    def __init__(self, fleet: Fleet, device_id: str, password: str | None):
        self.fleet = fleet
        self.id = device_id
        self.user = f"device-{device_id}"
        self.password = password
        self.prefix = f"_INBOX.{self.user}"
        self.wire: Wire | None = None
        self.up = asyncio.Event()  # NATS connected and subscribed
        self.session = None  # ConnectResponse
        self.conn_id = b""
        self.sess = 0
        self.requests: dict[str, asyncio.Future] = {}
        self.pubs: dict[str, asyncio.Future] = {}
        self.ack_inboxes: dict[str, str] = {}  # sub inbox suffix -> ack inbox
        self.n = 0
        self.acked = 0
        self.ready_at = 0.0
        self.got: dict[str, float] = {}  # "cfg"/"rel" -> time of the last delivery
        self.last_ack_at = 0.0
        self.session_at = 0.0  # when its first STAN session was answered
        self.back_told = False  # reported as publishing again after the storm
        self.heard = False  # a PubAck came since the last ping was due
        self.renewing = False
        self.reconnects = 0
        self.connect_unanswered = False

    # -- NATS ------------------------------------------------------------------

    async def dial(self) -> None:
        f = self.fleet
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN
        while True:
            wire = None
            try:
                transport, wire = await loop.create_connection(lambda: Wire(self), "127.0.0.1",
                                                               f.port)
                await asyncio.wait_for(asyncio.shield(wire.info), DEFAULT_REQUEST_TIMEOUT)
                if f.tls is not None:
                    # Bounded: uvloop leaves the handshake's future pending when the
                    # socket closed before it began (a server killed mid-dial).
                    transport = await asyncio.wait_for(
                        loop.start_tls(transport, wire, f.tls, server_hostname="127.0.0.1"),
                        DEFAULT_REQUEST_TIMEOUT)
                    wire.transport = transport
                connect = {"verbose": False, "pedantic": False, "headers": True,
                           "no_responders": True, "protocol": 1, "name": self.user}
                if self.password:
                    connect.update(user=self.user, **{"pass": self.password})
                wire.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n"
                          + f"SUB {self.prefix}.> 1\r\nPING\r\n".encode())
                await asyncio.wait_for(asyncio.shield(wire.pong), DEFAULT_REQUEST_TIMEOUT)
                self.wire = wire
                self.up.set()
                return
            except (OSError, ConnectionError, asyncio.TimeoutError, ValueError):
                if wire is not None and wire.transport is not None:
                    wire.transport.abort()  # not left half-open behind the next try
                if self.fleet.stopping:
                    raise
                await asyncio.sleep(backoff_s(delay))
                delay = min(delay * 2, RECONNECT_MAX)

    async def keep_connected(self) -> None:
        while not self.fleet.stopping:
            await self.wire.closed.wait()
            self.up.clear()
            if self.fleet.stopping:
                return
            self.reconnects += 1
            await self.dial()

    def drop(self) -> None:
        if self.wire and self.wire.transport:
            self.wire.transport.abort()

    def on_msg(self, subject: str, reply: str, data: bytes | None) -> None:
        tail = subject[len(self.prefix) + 1:]
        kind, _, rest = tail.partition(".")
        if kind == "r":
            fut = self.requests.pop(rest, None)
            if fut is not None and not fut.done():
                fut.set_result(data)
        elif kind == "ack":
            if data is None:
                # No responders: the server is not (yet) taking publishes. The
                # status names no guid, so every publish in flight is retried
                # (same guid) instead of waiting out its PubAck timeout.
                for fut in self.pubs.values():
                    if not fut.done():
                        fut.set_result("no responders")
            elif data:
                ack = pb.PubAck.FromString(data)
                fut = self.pubs.get(ack.guid)
                if fut is not None and not fut.done():
                    fut.set_result(ack.error)
                    if not ack.error:
                        self.heard = True
        elif kind == "hb":
            # Only the current session's: an abandoned session (its connect timed
            # out) must look dead, or the server refuses the next one as a duplicate.
            if reply and rest == str(self.sess):
                self.wire.pub(reply, b"")
        elif kind == "ping":
            if data and pb.PingResponse.FromString(data).error:
                asyncio.ensure_future(self.renew())
        elif kind in ("cfg", "rel") and data is not None:
            m = pb.MsgProto.FromString(data)
            self.got[kind] = time.monotonic()
            ack_inbox = self.ack_inboxes.get(tail)
            if ack_inbox:
                self.wire.pub(ack_inbox, pb.Ack(subject=m.subject, sequence=m.sequence)
                              .SerializeToString())

    async def request(self, subject: str, data: bytes) -> bytes:
        self.n += 1
        token = str(self.n)
        fut = asyncio.get_running_loop().create_future()
        self.requests[token] = fut
        self.wire.pub(subject, data, f"{self.prefix}.r.{token}")
        try:
            out = await asyncio.wait_for(fut, DEFAULT_REQUEST_TIMEOUT)
        finally:
            self.requests.pop(token, None)
        if out is None:
            raise ConnectionError("no responders")
        return out

    # -- STAN --------------------------------------------------------------------

    async def stan_session(self) -> None:
        if not self.connect_unanswered:
            self.sess += 1
            self.conn_id = os.urandom(11).hex().encode()
        req = pb.ConnectRequest(client_id=self.user, heartbeat_inbox=f"{self.prefix}.hb.{self.sess}",
                                protocol=1, conn_id=self.conn_id,
                                ping_interval=DEFAULT_PING_INTERVAL, ping_max_out=3)
        # A connect that timed out is asked again as the same session (conn_id,
        # heartbeat inbox): the server may have registered it meanwhile, and
        # then answers the retry with it instead of replacing it.
        self.connect_unanswered = True
        r = pb.ConnectResponse.FromString(
            await self.request(f"_STAN.discover.{CLUSTER}", req.SerializeToString()))
        self.connect_unanswered = False
        if r.error:
            raise ConnectionError(r.error)
        self.session = r
        if not self.session_at:
            self.session_at = time.monotonic()
        for kind, channel, durable, ack_wait, inflight in (
                ("cfg", f"devices.{self.id}.cfg", "cfg", 30, 1),
                ("rel", "devices.releases", "releases", 90, 4)):
            inbox = f"{kind}.{self.sess}"
            sr = pb.SubscriptionRequest(
                client_id=self.user, subject=channel, inbox=f"{self.prefix}.{inbox}",
                max_in_flight=inflight, ack_wait_in_secs=ack_wait, durable_name=durable,
                start_position=pb.LastReceived)
            resp = pb.SubscriptionResponse.FromString(
                await self.subscribe(r.sub_requests, sr.SerializeToString()))
            if resp.error:
                raise ConnectionError(resp.error)
            self.ack_inboxes[inbox] = resp.ack_inbox

    async def subscribe(self, subject: str, data: bytes) -> bytes:
        """A subscribe that timed out is asked again with the same inbox: the
        server answers a repeat of a durable it registered meanwhile with that
        subscription, where a new session would cost it three JetStream writes."""
        for attempt in range(SUBSCRIBE_ATTEMPTS):
            try:
                return await self.request(subject, data)
            except asyncio.TimeoutError:
                if attempt == SUBSCRIBE_ATTEMPTS - 1:
                    raise
                self.fleet.note_error("subscribe timeout, asked again")

    async def renew(self) -> None:
        if self.renewing:
            return
        self.renewing = True
        try:
            await self.retry(self.stan_session)
            self.fleet.renewals += 1
        finally:
            self.renewing = False

    async def retry(self, step) -> None:
        delay = RETRY_MIN
        while not self.fleet.stopping:
            try:
                await self.up.wait()
                return await step()
            except (ConnectionError, asyncio.TimeoutError) as e:
                self.fleet.note_error(str(e))
                await asyncio.sleep(backoff_s(delay))
                delay = min(delay * 2, RETRY_MAX)

    async def publish(self, channel: str, data: bytes) -> float:
        """Publish until acked (same guid, so a retry is stored once); the latency."""
        self.n += 1
        guid = f"{self.user}-{self.n}"
        delay = RETRY_MIN
        while True:
            await self.up.wait()
            while self.session is None or self.renewing:
                await asyncio.sleep(0.2)
            fut = asyncio.get_running_loop().create_future()
            self.pubs[guid] = fut
            pm = pb.PubMsg(client_id=self.user, guid=guid, subject=channel, data=data,
                           conn_id=self.conn_id)
            t0 = time.monotonic()
            wire = self.wire
            wire.pub(f"{self.session.pub_prefix}.{channel}", pm.SerializeToString(),
                     f"{self.prefix}.ack")
            # A publish written to a connection that then died is resent at once
            # after the reconnect (same guid: stored once), not after the timeout.
            lost = asyncio.ensure_future(wire.closed.wait())
            try:
                await asyncio.wait({fut, lost}, timeout=DEFAULT_PUB_ACK_TIMEOUT,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                self.pubs.pop(guid, None)
            if not fut.done():
                self.fleet.note_error("connection lost" if wire.closed.is_set()
                                      else "PubAck timeout")
                continue
            err = fut.result()
            if not err:
                self.last_ack_at = time.monotonic()
                return self.last_ack_at - t0
            self.fleet.note_error(err)
            if "unknown clientID" in err or "replaced" in err:
                await self.renew()
            await asyncio.sleep(backoff_s(delay))
            delay = min(delay * 2, RETRY_MAX)

    async def pinger(self) -> None:
        while not self.fleet.stopping:
            await asyncio.sleep(DEFAULT_PING_INTERVAL)
            if self.session is None or not self.up.is_set() or self.renewing:
                continue
            if self.heard:
                self.heard = False  # as the firmware: a PubAck in the interval was the ping
                continue
            # As the firmware: unanswered pings do not end the session (the
            # server is away, and restores it); only an answer with an error does.
            self.wire.pub(self.session.ping_requests,
                          pb.Ping(conn_id=self.conn_id).SerializeToString(), f"{self.prefix}.ping")

    async def run(self) -> None:
        f = self.fleet
        await self.dial()
        asyncio.ensure_future(self.keep_connected())
        await self.retry(self.stan_session)
        status = json.dumps({"version": "bench", "cfg": {}, "buffer_dropped": 0}).encode()
        await self.publish(f"devices.{self.id}.status", status)
        self.ready_at = time.monotonic()
        f.ready += 1
        if f.ready == len(f.devices):
            gc.freeze()  # connections and sessions, made during the ramp, stay too
        asyncio.ensure_future(self.pinger())
        await asyncio.sleep(random.random() * f.interval)  # spread readings over the interval
        while not f.stopping:
            t = time.monotonic()
            reading = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "temp": round(random.uniform(15, 25), 2)}).encode()
            lat = await self.publish(f"devices.{self.id}.events", reading)
            self.acked += 1
            if f.storming:
                f.recovery_lat.append(lat)
            else:
                f.timeline.append((t, lat))
            await asyncio.sleep(max(0.0, f.interval - (time.monotonic() - t)))


class Fleet:
    """This worker's devices; `ids` are (index in the whole fleet, device ID)."""

    def __init__(self, args, port: int, tls, passwords: dict, ids: list[tuple[int, str]]):
        self.args = args
        self.port = port
        self.tls = tls
        self.interval = args.interval
        self.index = [i for i, _ in ids]
        self.devices = [Device(self, d, passwords.get(d)) for _, d in ids]
        self.ready = 0
        self.renewals = 0
        self.stopping = False
        self.storming = False
        self.recovery_lat: list[float] = []
        self.errors: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.lag: list[float] = []
        self.gc_pauses: list[float] = []  # full collections, seconds each
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)
        # The devices live as long as the run: a full collection need not walk them.
        gc.freeze()
        self.timeline: list[tuple[float, float]] = []  # (sent at, latency) in steady load

    def _on_gc(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def note_error(self, text: str) -> None:
        key = text[:60]
        self.errors[key] = self.errors.get(key, 0) + 1

    async def start(self, t0: float, step: float) -> None:
        """Device i of the whole fleet starts at t0 + i * step (monotonic
        clocks are one clock across processes on Linux)."""
        for i, d in zip(self.index, self.devices):
            await asyncio.sleep(max(0.0, t0 + i * step - time.monotonic()))
            self.tasks.append(asyncio.create_task(d.run()))

    async def watch_lag(self) -> None:
        while not self.stopping:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            self.lag.append(time.monotonic() - t - 0.1)
            # What lived through a tick is mostly connections and sessions: out
            # of the collector's reach, or each full collection walks them all
            # (971 ms with 5,000 devices in a process, mid-ramp). The garbage
            # cycles frozen with them are a bench's to leak.
            gc.freeze()

    def status(self, since_pub: float, since_push: float) -> dict:
        started = [d.session_at for d in self.devices]
        return {"ready": self.ready,
                "last_session": max(started) if all(started) else 0.0,
                "publishing": sum(d.last_ack_at > since_pub for d in self.devices),
                "delivering": sum(all(d.got.get(k, 0) > since_push for k in ("cfg", "rel"))
                                  for d in self.devices)}

    def back(self, since_pub: float) -> list[str]:
        """Devices publishing again since `since_pub` not named before."""
        out = []
        for d in self.devices:
            if not d.back_told and d.last_ack_at > since_pub:
                d.back_told = True
                out.append(d.id)
        return out

    def report(self) -> dict:
        return {"timeline": self.timeline, "recovery_lat": self.recovery_lat, "lag": self.lag,
                "gc_pauses": self.gc_pauses,
                "errors": self.errors, "renewals": self.renewals,
                "acked": {d.id: d.acked for d in self.devices}}

    def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        for d in self.devices:
            d.drop()


async def _serve(conn, fleet: Fleet) -> None:
    """Answer fleet_load.py's commands, one at a time, until "stop"."""
    loop = asyncio.get_running_loop()
    starter = lag = None
    while True:
        cmd, *arg = await loop.run_in_executor(None, conn.recv)
        out: object = None
        if cmd == "start":
            lag = asyncio.create_task(fleet.watch_lag())
            starter = asyncio.create_task(fleet.start(*arg))
        elif cmd == "status":
            out = fleet.status(*arg)
        elif cmd == "back":
            out = fleet.back(*arg)
        elif cmd == "storming":
            fleet.storming = arg[0]
        elif cmd == "drop":
            for d in fleet.devices:
                d.drop()
        elif cmd == "report":
            out = fleet.report()
        elif cmd == "stop":
            fleet.stop()
            for t in (starter, lag):
                if t is not None:
                    t.cancel()
            conn.send(fleet.report())
            return
        conn.send(out)


def _quiet_closed_dials(loop, context) -> None:
    """uvloop prints a traceback for every TLS dial whose socket closed before
    its handshake began: a storm kills the server mid-dial, thousands of them
    (20,000 lines in one run). The dial fails and is retried like any other."""
    exc = context.get("exception")
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        return
    loop.default_exception_handler(context)


def worker(conn, args, port: int, ca: str | None, passwords: dict,
           ids: list[tuple[int, str]]) -> None:
    """A worker process's entry point."""
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(_quiet_closed_dials)
        tls = None
        if ca:
            from stanfleet.security.certs import client_context
            tls = client_context(ca)
        await _serve(conn, Fleet(args, port, tls, passwords, ids))
    if uvloop is not None:
        uvloop.install()
    asyncio.run(main())
