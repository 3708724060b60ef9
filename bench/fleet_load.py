"""Fleet load: N device-like STAN clients against one `stanfleet streaming-server`.

    .venv/bin/python bench/fleet_load.py --devices 1000 [--secure] [--storm server|clients]

Each simulated device does what the firmware does (firmware/app/device.py,
firmware/lib/stan.py): STAN connect as `device-<ID>`, durable subscriptions
on its cfg channel and on `devices.releases` (start at the last message),
a status message, then a reading every --interval seconds awaiting its
PubAck (retried under the same guid until acked), protocol-1 pings every 5 s
and answers to the server's heartbeats.

Devices are raw asyncio NATS connections, not nats-py ones: a nats-py client
costs three tasks, a flusher and futures per request, and 10,000 of them
spend the generator's one core before the server is loaded (measured: see
--nats-py). With --secure every device logs in over TLS with its own
password (creds.py accounts, bcrypt cost --bcrypt-rounds) and the server
runs with --security-dir, as `stanfleet up` does.

Storms: `server` SIGKILLs the streaming server (its embedded nats-server
goes with it) and restarts it; `clients` drops every device's connection at
once. Afterwards a cfg message goes to every device and one release to all,
and the bench times until every device has a new reading acked and both
messages delivered (its durables are live again). Last, every device's
acked readings are compared with what its events stream holds.

Load only to 127.0.0.1. Figures on a shared 2-core machine are pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time

import nats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.defaults import DEVICE_CHANNEL_FAMILIES  # noqa: E402
from stanfleet.pb import protocol_pb2 as pb  # noqa: E402
from stanfleet.streaming.families import family_of  # noqa: E402
from stanfleet.streaming.naming import Subjects  # noqa: E402

from tests.streaming.serverproc import ServerProcess, free_port  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None

DEFAULT_DEVICES = 200
DEFAULT_INTERVAL = 10.0  # s between readings
DEFAULT_RAMP = 20.0  # s over which devices start
DEFAULT_DURATION = 40.0  # s of steady load before the storm
DEFAULT_PING_INTERVAL = 5  # the firmware's
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_PUB_ACK_TIMEOUT = 30.0  # the firmware's
DEFAULT_DEADLINE = 300.0  # give up waiting for a phase after this long
CLUSTER = "test-cluster"
TARGETS = {"connect": 60.0, "p99_ms": 100.0, "recovery": 60.0}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


class Wire(asyncio.Protocol):
    """Just enough NATS client protocol for a device: PUB, SUB, MSG/HMSG, PING."""

    def __init__(self, dev: Device):
        self.dev = dev
        self.transport = None
        self.buf = bytearray()
        self.info = asyncio.get_running_loop().create_future()
        self.pong = asyncio.get_running_loop().create_future()
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
        self.pings_out = 0
        self.renewing = False
        self.reconnects = 0

    # -- NATS ------------------------------------------------------------------

    async def dial(self) -> None:
        f = self.fleet
        loop = asyncio.get_running_loop()
        delay = 0.25
        while True:
            try:
                transport, wire = await loop.create_connection(lambda: Wire(self), "127.0.0.1",
                                                               f.port)
                await asyncio.wait_for(asyncio.shield(wire.info), DEFAULT_REQUEST_TIMEOUT)
                if f.tls is not None:
                    transport = await loop.start_tls(transport, wire, f.tls,
                                                     server_hostname="127.0.0.1")
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
                if self.fleet.stopping:
                    raise
                await asyncio.sleep(delay / 2 + random.random() * delay / 2)
                delay = min(delay * 2, 4.0)

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
        elif kind == "hb":
            # Only the current session's: an abandoned session (its connect timed
            # out) must look dead, or the server refuses the next one as a duplicate.
            if reply and rest == str(self.sess):
                self.wire.pub(reply, b"")
        elif kind == "ping":
            self.pings_out = 0
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
        self.sess += 1
        self.conn_id = os.urandom(11).hex().encode()
        req = pb.ConnectRequest(client_id=self.user, heartbeat_inbox=f"{self.prefix}.hb.{self.sess}",
                                protocol=1, conn_id=self.conn_id,
                                ping_interval=DEFAULT_PING_INTERVAL, ping_max_out=3)
        r = pb.ConnectResponse.FromString(
            await self.request(f"_STAN.discover.{CLUSTER}", req.SerializeToString()))
        if r.error:
            raise ConnectionError(r.error)
        self.session = r
        self.pings_out = 0
        for kind, channel, durable, ack_wait, inflight in (
                ("cfg", f"devices.{self.id}.cfg", "cfg", 30, 1),
                ("rel", "devices.releases", "releases", 90, 4)):
            inbox = f"{kind}.{self.sess}"
            sr = pb.SubscriptionRequest(
                client_id=self.user, subject=channel, inbox=f"{self.prefix}.{inbox}",
                max_in_flight=inflight, ack_wait_in_secs=ack_wait, durable_name=durable,
                start_position=pb.LastReceived)
            resp = pb.SubscriptionResponse.FromString(
                await self.request(r.sub_requests, sr.SerializeToString()))
            if resp.error:
                raise ConnectionError(resp.error)
            self.ack_inboxes[inbox] = resp.ack_inbox

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
        delay = 0.5
        while not self.fleet.stopping:
            try:
                await self.up.wait()
                return await step()
            except (ConnectionError, asyncio.TimeoutError) as e:
                self.fleet.note_error(str(e))
                await asyncio.sleep(delay / 2 + random.random() * delay / 2)
                delay = min(delay * 2, 30.0)

    async def publish(self, channel: str, data: bytes) -> float:
        """Publish until acked (same guid, so a retry is stored once); the latency."""
        self.n += 1
        guid = f"{self.user}-{self.n}"
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
            await asyncio.sleep(1)

    async def pinger(self) -> None:
        while not self.fleet.stopping:
            await asyncio.sleep(DEFAULT_PING_INTERVAL)
            if self.session is None or not self.up.is_set() or self.renewing:
                continue
            self.pings_out += 1
            if self.pings_out > 3:
                asyncio.ensure_future(self.renew())
                continue
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
    def __init__(self, args, port: int, tls, passwords: dict):
        self.args = args
        self.port = port
        self.tls = tls
        self.interval = args.interval
        self.devices = [Device(self, f"B{i:06d}", passwords.get(f"B{i:06d}"))
                        for i in range(args.devices)]
        self.ready = 0
        self.renewals = 0
        self.stopping = False
        self.storming = False
        self.recovery_lat: list[float] = []
        self.errors: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.lag: list[float] = []
        self.timeline: list[tuple[float, float]] = []  # (sent at, latency) in steady load

    def note_error(self, text: str) -> None:
        key = text[:60]
        self.errors[key] = self.errors.get(key, 0) + 1

    async def start(self) -> float:
        t0 = time.monotonic()
        step = self.args.ramp / max(1, len(self.devices))
        for i, d in enumerate(self.devices):
            self.tasks.append(asyncio.create_task(d.run()))
            await asyncio.sleep(max(0.0, t0 + i * step - time.monotonic()))
        await until(lambda: self.ready == len(self.devices), "all devices ready",
                    lambda: f"{self.ready}/{len(self.devices)} ready")
        self.start_done = time.monotonic()
        return self.start_done - t0

    async def watch_lag(self) -> None:
        while not self.stopping:
            t = time.monotonic()
            await asyncio.sleep(0.1)
            self.lag.append(time.monotonic() - t - 0.1)


async def until(cond, what: str, progress=lambda: "", deadline: float = DEFAULT_DEADLINE) -> None:
    """Poll a condition of the load's own counters (not a synchronisation
    with the server): the bench measures how long the fleet takes."""
    end = time.monotonic() + deadline
    last = 0.0
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"gave up waiting for {what} after {deadline:.0f} s: {progress()}")
        if time.monotonic() - last > 10:
            print(f"  ... waiting for {what}: {progress()}", flush=True)
            last = time.monotonic()
        await asyncio.sleep(0.05)


def worst_windows(timeline: list[tuple[float, float]], t0: float, n: int = 3) -> str:
    """Where the tail comes from: a few bad moments or everywhere."""
    buckets: dict[int, list[float]] = {}
    for t, lat in timeline:
        buckets.setdefault(int((t - t0) // 5), []).append(lat)
    worst = sorted(((k, v) for k, v in buckets.items() if k >= 0),
                   key=lambda kv: -pct(kv[1], 99))[:n]
    return "; ".join(f"{k * 5:+d}s: p99 {pct(v, 99) * 1e3:.0f} ms ({len(v)} readings)"
                     for k, v in sorted(worst)) or "none"


def rss_mb(pid: int | None) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


def child_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def make_security(tmp: str, ids: list[str], rounds: int) -> tuple[str, dict, tuple]:
    """A security dir as `stanfleet up` makes it; returns (dir, passwords, service login)."""
    from stanfleet.security import creds
    from stanfleet.security.certs import init

    sec = os.path.join(tmp, "security")
    store = creds.Store(sec, cluster_id=CLUSTER)
    init(store.certs_dir, ["localhost", "127.0.0.1"])
    store.server_login()
    rounds = rounds or creds.BCRYPT_ROUNDS
    creds.BCRYPT_ROUNDS = rounds
    t0 = time.monotonic()
    paths = store.add_devices(ids)
    print(f"credentials: {len(ids)} devices in {time.monotonic() - t0:.1f} s "
          f"(bcrypt cost {rounds}); accounts file "
          f"{os.path.getsize(store.accounts_file) / 1e6:.1f} MB", flush=True)
    store.add_service("admin")
    passwords = {}
    for p in paths:
        with open(p) as f:
            c = json.load(f)
        passwords[c["device_id"]] = c["password"]
    with open(store.path("services", "admin.json")) as f:
        admin = json.load(f)
    return sec, passwords, (admin["user"], admin["password"])


async def service_client(args, port: int, sec: str | None, login):
    from stanfleet.client import Client

    opts = {}
    if sec:
        from stanfleet.security.certs import client_context
        opts = dict(tls=client_context(os.path.join(sec, "certs", "ca.pem")),
                    tls_hostname="127.0.0.1", user=login[0], password=login[1],
                    inbox_prefix=f"_INBOX.{login[0]}")
    scheme = "tls" if sec else "nats"
    nc = await nats.connect(f"{scheme}://127.0.0.1:{port}", max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, **opts)
    sc = Client()
    await sc.connect(CLUSTER, f"bench-admin-{os.getpid()}", nats=nc)
    return sc, nc


async def push_to_all(sc, fleet: Fleet, tag: str) -> None:
    """One cfg message per device and one release: the durables must deliver them."""
    sem = asyncio.Semaphore(512)

    async def one(d):
        async with sem:
            await sc.publish(f"devices.{d.id}.cfg", json.dumps({"tag": tag}).encode())
    await asyncio.gather(*(one(d) for d in fleet.devices))
    await sc.publish("devices.releases", json.dumps({"version": tag}).encode())


def _split(text: str) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


async def count_stored(port: int, sec: str | None, fleet: Fleet) -> int:
    """Acked readings missing from the events streams."""
    opts = {}
    if sec:
        from stanfleet.security.certs import client_context
        with open(os.path.join(sec, "stan.secret")) as f:
            pw = f.read().strip()
        opts = dict(tls=client_context(os.path.join(sec, "certs", "ca.pem")),
                    tls_hostname="127.0.0.1", user="stan", password=pw)
    nc = await nats.connect(f"{'tls' if sec else 'nats'}://127.0.0.1:{port}", **opts)
    jsm = nc.jsm()
    subjects = Subjects(CLUSTER)
    sem = asyncio.Semaphore(64)
    lost = 0

    family = family_of(_split(fleet.args.families), "devices.X.events")
    if family is not None:
        # One stream for all events channels: its message count per subject.
        info = await jsm.stream_info(subjects.stream_for(family),
                                     subjects_filter=subjects.store_subject(family))
        stored = info.state.subjects or {}
        for d in fleet.devices:
            lost += max(0, d.acked - stored.get(subjects.store_subject(f"devices.{d.id}.events"), 0))
        await nc.close()
        return lost

    async def one(d):
        nonlocal lost
        async with sem:
            info = await jsm.stream_info(subjects.stream_for(f"devices.{d.id}.events"))
        lost += max(0, d.acked - info.state.messages)
    await asyncio.gather(*(one(d) for d in fleet.devices))
    await nc.close()
    return lost


async def main(args) -> None:
    loop_name = "uvloop" if uvloop else "asyncio"
    print(f"fleet load: {args.devices} devices, a reading every {args.interval:g} s, "
          f"{'TLS + authorization' if args.secure else 'plaintext, no auth'}; event loop "
          f"{loop_name}; cores {os.cpu_count()} (shared: figures are pessimistic)", flush=True)
    ids = [f"B{i:06d}" for i in range(args.devices)]
    with tempfile.TemporaryDirectory(prefix="stanfleet-fleet-") as tmp:
        sec, passwords, login = None, {}, None
        if args.secure:
            sec, passwords, login = await asyncio.to_thread(make_security, tmp, ids,
                                                            args.bcrypt_rounds)
        port = free_port()
        # File store: a restart must find what was acked before the kill (the
        # command line's default, memory, as Go's, starts clean).
        sargs = ["-a", "127.0.0.1", "-p", str(port), "-dir", os.path.join(tmp, "data"),
                 "-cid", CLUSTER, "-store", args.store]
        if sec:
            sargs += ["--security-dir", sec]
        if args.families:
            sargs += ["--channel_families", args.families]
        server = ServerProcess(*sargs, log_path=os.path.join(args.log_dir or tmp, "server.log"))
        await server.start(timeout=120)
        tls = None
        if sec:
            from stanfleet.security.certs import client_context
            tls = client_context(os.path.join(sec, "certs", "ca.pem"))
        base = (rss_mb(server.proc.pid), rss_mb(child_pid(server.proc.pid)))
        fleet = Fleet(args, port, tls, passwords)
        lag_task = asyncio.create_task(fleet.watch_lag())
        try:
            connect_s = await fleet.start()
            pids = (server.proc.pid, child_pid(server.proc.pid))
            print(f"connect: all {args.devices} ready (session, 2 durables, status acked) "
                  f"in {connect_s:.1f} s, ramp {args.ramp:g} s  [target < {TARGETS['connect']:g} s]",
                  flush=True)
            await asyncio.sleep(args.duration)
            ramp = [lat for t, lat in fleet.timeline if t < fleet.start_done]
            lat = [lat for t, lat in fleet.timeline if t >= fleet.start_done]
            print(f"PubAck, steady load ({len(lat)} readings after all were ready): "
                  f"p50 {pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms, "
                  f"max {max(lat or [0]) * 1e3:.1f} ms  [target p99 < {TARGETS['p99_ms']:g} ms]; "
                  f"while others connected ({len(ramp)}): p99 {pct(ramp, 99) * 1e3:.0f} ms",
                  flush=True)
            srv, nsrv = rss_mb(pids[0]), rss_mb(pids[1])
            per_k = [(now - was) / max(1, args.devices) * 1000
                     for now, was in ((srv, base[0]), (nsrv, base[1]))]
            print(f"RSS: streaming server {srv:.0f} MB, nats-server {nsrv:.0f} MB with "
                  f"{args.devices * 3 + 1} channels and {args.devices * 2} durables; per 1,000 "
                  f"devices above the idle server: {per_k[0]:.0f} MB + {per_k[1]:.0f} MB",
                  flush=True)
            print("slowest 5 s windows (from the end of the ramp): " + worst_windows(
                fleet.timeline, fleet.start_done), flush=True)
            print(f"generator event-loop lag: p99 {pct(fleet.lag, 99) * 1e3:.0f} ms, "
                  f"max {max(fleet.lag or [0]) * 1e3:.0f} ms", flush=True)
            if args.storm != "none":
                await storm(args, fleet, server, port, sec, login)
            fleet.stopping = True
            lost = await count_stored(port, sec, fleet)
            print(f"readings lost: {lost} of {sum(d.acked for d in fleet.devices)} acked  "
                  f"[target 0]", flush=True)
        finally:
            fleet.stopping = True
            lag_task.cancel()
            for t in fleet.tasks:
                t.cancel()
            for d in fleet.devices:
                d.drop()
            await server.stop()
        if fleet.errors:
            print("errors seen by devices (count): " + ", ".join(
                f"{k!r}: {v}" for k, v in sorted(fleet.errors.items(), key=lambda kv: -kv[1])))


async def storm(args, fleet: Fleet, server: ServerProcess, port: int, sec, login) -> None:
    fleet.storming = True
    t0 = time.monotonic()
    if args.storm == "server":
        await server.kill()
        t_killed = time.monotonic()
        await server.start(timeout=300)
        print(f"storm: SIGKILL + restart; server ready {time.monotonic() - t_killed:.1f} s "
              f"after the kill", flush=True)
    else:
        for d in fleet.devices:
            d.drop()
        print("storm: every device dropped its connection at once", flush=True)
    t_restart = time.monotonic()
    await until(lambda: all(d.last_ack_at > t_restart for d in fleet.devices),
                "every device publishing", lambda: str(sum(d.last_ack_at > t_restart
                                                           for d in fleet.devices)))
    publishing = time.monotonic() - t_restart
    # Then a cfg message to every device and one release: each device's two
    # durables must deliver them. (Sent earlier, a message to a device still
    # reconnecting waits out its ack_wait, 30 s or 90 s: STAN's rule, not a fault.)
    sc, nc = await service_client(args, port, sec, login)
    t_push = time.monotonic()
    await push_to_all(sc, fleet, f"storm-{int(t0)}")
    pushed = time.monotonic() - t_push
    both = ("cfg", "rel")
    await until(lambda: all(all(d.got.get(k, 0) > t_push for k in both)
                            for d in fleet.devices),
                "every durable delivering", lambda: str(sum(
                    all(d.got.get(k, 0) > t_push for k in both) for d in fleet.devices)))
    resubscribed = time.monotonic() - t_restart
    await sc.close()
    await nc.close()
    lat = fleet.recovery_lat
    print(f"recovery: every device publishing {publishing:.1f} s and both durables delivering "
          f"{resubscribed:.1f} s after {'the restart' if args.storm == 'server' else 'the drop'}"
          f" ({time.monotonic() - t0:.1f} s from the storm)  [target < {TARGETS['recovery']:g} s]; "
          f"{fleet.renewals} sessions renewed; {len(fleet.devices)} cfg messages sent in "
          f"{pushed:.1f} s; PubAck during recovery p99 "
          f"{pct(lat, 99) * 1e3:.0f} ms, max {max(lat or [0]) * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    p.add_argument("--ramp", type=float, default=DEFAULT_RAMP)
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                   help="seconds of steady load measured before the storm")
    p.add_argument("--storm", choices=("server", "clients", "none"), default="server")
    p.add_argument("--secure", action="store_true", help="TLS and per-device passwords, --authz")
    p.add_argument("--bcrypt-rounds", type=int, default=None,
                   help="bcrypt cost of the device passwords (default: the product's, "
                        "creds.BCRYPT_ROUNDS); try 11 to see what a slow hash costs a fleet")
    p.add_argument("--log-dir", default=None, help="keep the server log here")
    p.add_argument("--store", choices=("file", "memory"), default="file",
                   help="the server's -store (memory loses everything at a SIGKILL)")
    p.add_argument("--families", default=",".join(DEVICE_CHANNEL_FAMILIES),
                   help="the server's --channel_families (default: the device channels, as "
                        "`stanfleet up`); '' for a stream per channel")
    a = p.parse_args()
    if a.devices > 20000:
        raise SystemExit("bounded to 20,000 devices")
    if uvloop is not None:
        uvloop.install()
    asyncio.run(main(a))
