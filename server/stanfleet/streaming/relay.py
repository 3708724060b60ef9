"""The publish hot path's own NATS connection: raw protocol, no task per message.

Through nats-py every PubMsg cost a Msg object, a queue hop, a coroutine
and a flusher wake-up, twice (the PubMsg, then JetStream's store-ack), and a
profile of the relay showed that bookkeeping, not our work, bounding the
rate. Here the NATS protocol is parsed in `data_received` and each message
is handed to a plain function; everything those functions send during one
read is written with one syscall at its end. What reaches us in one read is
usually many PubMsgs and store-acks, so the batching toward JetStream and
toward clients comes for free, and the PubAck still goes out only after
JetStream's store-ack.

It speaks only what the hot path needs: CONNECT (user/password or token,
TLS after INFO), SUB, PUB/HPUB, MSG/HMSG, PING/PONG, and reconnects with
its subscriptions when the connection drops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from urllib.parse import urlparse

log = logging.getLogger("stanfleet.streaming.relay")

DEFAULT_RECONNECT_WAIT = 0.2  # s, doubled per failed attempt
DEFAULT_RECONNECT_MAX_WAIT = 2.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class RelayError(ConnectionError):
    """The relay connection could not be (re)established."""


class _Wire(asyncio.Protocol):
    def __init__(self, relay: Relay, preface: bytes = b""):
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface = preface  # an adopted connection's bytes read but not parsed
        loop = asyncio.get_running_loop()
        self.info = loop.create_future()
        self.pong = loop.create_future()
        self.closed = asyncio.Event()
        self.error = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.preface:  # before anything read from now on
            preface, self.preface = self.preface, b""
            self.data_received(preface)

    def connection_lost(self, exc) -> None:
        self.closed.set()
        for f in (self.info, self.pong):
            if not f.done():
                f.set_exception(RelayError(self.error or str(exc or "connection closed")))
        self.relay._lost(self)

    def data_received(self, data: bytes) -> None:
        # Parsed on an immutable bytes object: each slice is then one copy, and
        # a read that ends on a message boundary (the usual case) copies nothing.
        if self.buf:
            self.buf += data
            data = bytes(self.buf)
        relay = self.relay
        handlers = relay._handlers
        holding = relay._holding
        pos = 0
        end = len(data)
        try:
            while pos < end:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    break
                hmsg = data.startswith(b"HMSG ", pos)
                if hmsg or data.startswith(b"MSG ", pos):
                    args = data[pos + (5 if hmsg else 4):i].split(b" ")
                    size = int(args[-1])
                    start = i + 2
                    if end < start + size + 2:
                        break
                    if hmsg:
                        hlen = int(args[-2])
                        headers = data[start:start + hlen]
                        payload = data[start + hlen:start + size]
                        reply = args[2].decode() if len(args) == 5 else ""
                    else:
                        headers = None
                        payload = data[start:start + size]
                        reply = args[2].decode() if len(args) == 4 else ""
                    pos = start + size + 2
                    if holding is not None:  # adopted, not released yet: in order, later
                        holding.append((args[1], args[0].decode(), reply, headers, payload))
                        continue
                    handler = handlers.get(args[1])
                    if handler is not None:
                        try:
                            handler(args[0].decode(), reply, headers, payload)
                        except Exception:  # a bug must not take the connection down
                            log.exception("relay handler for %s failed", args[0])
                    continue
                line = data[pos:i]
                pos = i + 2
                if line == b"PING":
                    relay._out.append(b"PONG\r\n")
                elif line == b"PONG":
                    if not self.pong.done():
                        self.pong.set_result(True)
                elif line.startswith(b"INFO "):
                    if not self.info.done():
                        self.info.set_result(json.loads(line[5:]))
                elif line.startswith(b"-ERR"):
                    self.error = line.decode(errors="replace")
                    log.error("relay: nats-server says %s", self.error)
        finally:
            self.buf = bytearray(data[pos:]) if pos < end else bytearray()
            relay.flush()


class Relay:
    """One NATS connection; handlers are (subject, reply, raw headers | None, payload)."""

    def __init__(self, servers: list[str], *, user: str | None = None,
                 password: str | None = None, token: str | None = None,
                 tls: ssl.SSLContext | None = None, name: str = "stanfleet-relay"):
        self.servers = servers
        self.user, self.password, self.token = user, password, token
        self.tls = tls
        self.name = name
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self._subs: dict[bytes, tuple[str, object]] = {}  # sid -> (subject, handler)
        self._handlers: dict[bytes, object] = {}
        self._out: list[bytes] = []
        self._wire: _Wire | None = None
        self._closing = False
        self._reconnecting: asyncio.Task | None = None
        self._flush_scheduled = False
        self._paused = False
        # Called first at every flush (ChannelStore: send the stores it grouped
        # while this read was parsed); what it sends goes out in that flush.
        self.before_flush = None
        # An adopted connection (adopt): its subscriptions not yet claimed by
        # subscribe(), and the messages held until release().
        self._adopted: dict[str, bytes] = {}
        self._holding: list[tuple] | None = None

    # -- connection ----------------------------------------------------------------

    async def connect(self) -> None:
        last = None
        for url in self.servers:
            try:
                await self._dial(url)
                return
            except (OSError, RelayError, asyncio.TimeoutError, ssl.SSLError) as e:
                last = e
        raise RelayError(f"relay cannot connect to {', '.join(self.servers)}: {last}")

    async def _dial(self, url: str) -> None:
        u = urlparse(url if "://" in url else f"nats://{url}")
        loop = asyncio.get_running_loop()
        transport, wire = await asyncio.wait_for(
            loop.create_connection(lambda: _Wire(self), u.hostname, u.port or 4222),
            DEFAULT_CONNECT_TIMEOUT)
        try:
            info = await asyncio.wait_for(asyncio.shield(wire.info), DEFAULT_CONNECT_TIMEOUT)
            self.max_payload = info.get("max_payload", DEFAULT_MAX_PAYLOAD)
            if info.get("tls_required") or self.tls is not None or u.scheme == "tls":
                ctx = self.tls or ssl.create_default_context()
                transport = await loop.start_tls(transport, wire, ctx,
                                                 server_hostname=u.hostname)
                wire.transport = transport
            connect = {"verbose": False, "pedantic": False, "headers": True,
                       "no_responders": True, "protocol": 1, "name": self.name,
                       "lang": "python-raw", "version": "1"}
            user = u.username or self.user
            password = u.password or self.password
            if user:
                connect.update(user=user, **{"pass": password or ""})
            elif self.token:
                connect["auth_token"] = self.token
            first = [b"CONNECT " + json.dumps(connect).encode() + b"\r\n"]
            first += [f"SUB {subject} {sid.decode()}\r\n".encode()
                      for sid, (subject, _) in self._subs.items()]
            transport.write(b"".join(first) + b"PING\r\n")
            await asyncio.wait_for(asyncio.shield(wire.pong), DEFAULT_CONNECT_TIMEOUT)
        except BaseException:
            transport.abort()
            raise
        self._wire = wire
        if self._paused:
            transport.pause_reading()
        self.flush()

    async def adopt(self, handover) -> None:
        """Take over early.py's connection instead of dialling: its subscriptions
        go to whoever subscribe()s their subjects, and everything it held, and
        everything read from now on, waits for release(), in arrival order."""
        self._adopted = dict(handover.sids)
        self._holding = list(handover.held)
        self.max_payload = handover.max_payload
        loop = asyncio.get_running_loop()
        _, wire = await loop.create_connection(lambda: _Wire(self, handover.rest),
                                               sock=handover.sock)
        wire.info.set_result({})
        self._wire = wire
        if self._paused:
            wire.transport.pause_reading()
        self.flush()

    def release(self) -> int:
        """Hand what adopt() held to the handlers, in order; then serve as usual.
        The adopted subscriptions nobody claimed end here. Returns how many."""
        held, self._holding = self._holding or [], None
        for sid in self._adopted.values():
            self._out.append(b"UNSUB " + sid + b"\r\n")
        self._adopted = {}
        handlers = self._handlers
        for sid, subject, reply, headers, payload in held:
            handler = handlers.get(sid)
            if handler is None:
                log.warning("relay: a message on %s held at start-up had no taker", subject)
                continue
            try:
                handler(subject, reply, headers, payload)
            except Exception:
                log.exception("relay handler for %s failed", subject)
        self.flush()
        return len(held)

    def _lost(self, wire: _Wire) -> None:
        if wire is not self._wire or self._closing:
            return
        self._wire = None
        self._adopted = {}  # gone with the connection: subscribe() subscribes anew
        log.warning("relay connection lost (%s); reconnecting", wire.error or "closed")
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        wait = DEFAULT_RECONNECT_WAIT
        while not self._closing:
            try:
                await self.connect()
                log.info("relay reconnected")
                return
            except RelayError:
                await asyncio.sleep(wait)
                wait = min(wait * 2, DEFAULT_RECONNECT_MAX_WAIT)

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        wire, self._wire = self._wire, None
        if wire is not None and wire.transport is not None:
            self.flush_to(wire)
            wire.transport.close()
            try:
                await asyncio.wait_for(wire.closed.wait(), 2)
            except asyncio.TimeoutError:
                wire.transport.abort()

    # -- protocol --------------------------------------------------------------------

    def subscribe(self, subject: str, handler) -> bytes:
        sid = self._adopted.pop(subject, None)
        if sid is not None:  # subscribed already, by the adopted connection
            self._subs[sid] = (subject, handler)
            self._handlers[sid] = handler
            return sid
        sid = str(len(self._subs) + 1).encode()
        while sid in self._subs:
            sid = str(int(sid) + 1).encode()
        self._subs[sid] = (subject, handler)
        self._handlers[sid] = handler
        self._out.append(f"SUB {subject} {sid.decode()}\r\n".encode())
        self.flush()
        return sid

    def unsubscribe(self, sid: bytes) -> None:
        if self._subs.pop(sid, None) is not None:
            self._handlers.pop(sid, None)
            self._out.append(b"UNSUB " + sid + b"\r\n")
            self.flush()

    def publish(self, subject: str, payload: bytes, reply: str = "",
                headers: bytes | None = None) -> None:
        """Queued; written at the end of the current read, or on the next loop turn."""
        # One formatted bytes object per message: fewer pieces for the join.
        if headers:
            self._out.append(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply.encode(), len(headers), len(headers) + len(payload),
                headers, payload))
        else:
            self._out.append(b"PUB %s %s %d\r\n%s\r\n" % (
                subject.encode(), reply.encode(), len(payload), payload))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send(self, raw: bytes) -> None:
        """A protocol line (with its payload) already formatted; queued as publish()."""
        self._out.append(raw)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """A flush soon (the end of the read being parsed flushes anyway)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self.before_flush is not None:
            self._flush_scheduled = True  # what it sends goes out now, not on another turn
            try:
                self.before_flush()
            except Exception:  # a bug must not stop the relay from writing
                log.exception("relay: before_flush failed")
        self._flush_scheduled = False
        if self._wire is not None:
            self.flush_to(self._wire)

    def flush_to(self, wire: _Wire) -> None:
        if self._out and wire.transport is not None and not wire.transport.is_closing():
            out, self._out = self._out, []
            wire.transport.write(b"".join(out))

    async def ping(self, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        """Round trip: everything written before has reached nats-server."""
        wire = self._wire
        if wire is None:
            raise RelayError("relay not connected")
        wire.pong = asyncio.get_running_loop().create_future()
        self._out.append(b"PING\r\n")
        self.flush()
        await asyncio.wait_for(asyncio.shield(wire.pong), timeout)

    def pause(self) -> None:
        """Stop reading (back pressure); messages wait in nats-server meanwhile."""
        self._paused = True
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.pause_reading()

    def resume(self) -> None:
        self._paused = False
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.resume_reading()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def connected(self) -> bool:
        return self._wire is not None


def parse_headers(raw: bytes | None) -> dict | None:
    """A NATS header block ("NATS/1.0 ...\\r\\nKey: value\\r\\n...") as a dict."""
    if not raw:
        return None
    lines = raw.decode(errors="replace").split("\r\n")
    out = {}
    status = lines[0][len("NATS/1.0"):].strip()
    if status:
        out["Status"] = status.split(" ", 1)[0]
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
