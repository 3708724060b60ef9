"""Hot subscriptions handled inside nats-py's parser, and answers written at once.

JetStream's store-acks must arrive on the connection deliveries leave on (a
PubAck has to reach the publisher before any subscriber gets the message), and
that connection is nats-py's. Through nats-py's public API each store-ack
cost a Msg object, a header dict, a queue hop to the subscription's task, a
coroutine, a subject check and a wake-up of the flusher task: in a profile of
async publish that was a quarter of the server's CPU, and two event-loop turns
of latency for a one-at-a-time publisher.

Here a subscription's raw message (subject, reply, data, header bytes) goes to
a plain function from the parser, in arrival order, and what it answers is
appended to the connection's pending output and written, with everything else
pending there, as soon as the parser has finished the read it came in: one
write per read however many answers, and no loop turn in between. Since a store-ack is handled
the moment it is parsed, its PubAck is queued before any later delivery on the
same connection is even read: the order is kept, not raced.

nats-py's reads are parsed here too (`_parse_frames`): its parser spent a
regex, a dict and a coroutine on every message, a tenth of the server's CPU
with a subscriber; other messages and control lines still go to nats-py.

This reaches into nats-py internals (`_process_msg`, the parser `_ps` with its
`buf` and `state`, `_pending`, the transport); `InlineSubscriptions` checks they are there and refuses to start
otherwise (InlineUnsupported), so a nats-py that changes them fails loudly at
start-up, not silently in the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE as _AWAITING_CONTROL_LINE

from ..errors import CommandError

log = logging.getLogger("stanfleet.streaming.inline")

# (subject, reply, data, raw header block or None) -> None, all bytes
Handler = Callable[[bytes, bytes, bytes, "bytes | None"], None]

_NEEDED = ("_process_msg", "_ps", "_pending", "_pending_data_size", "_transport", "subscribe")
_PARSER_NEEDED = ("buf", "state", "parse")


class InlineUnsupported(CommandError):
    """This nats-py lacks the internals inline handling relies on: one line
    at start-up (`stanfleet: ...`), not a traceback in the hot path."""


def raw_client(nc):
    """The nats-py client under a wrapper such as ft.FencedConnection."""
    while hasattr(nc, "_nc"):
        nc = nc._nc
    return nc


class InlineSubscriptions:
    """Inline subscriptions and immediate publishes on one nats-py client."""

    @classmethod
    def of(cls, nc) -> "InlineSubscriptions":
        """The client's one instance: an FT server activated again reuses it
        instead of wrapping nats-py's methods once more."""
        client = raw_client(nc)
        existing = client.__dict__.get("_stanfleet_inline")
        if existing is None:
            existing = client._stanfleet_inline = cls(client)
        return existing

    def __init__(self, nc):
        client = raw_client(nc)
        missing = [a for a in _NEEDED if not hasattr(client, a)]
        missing += [f"_ps.{a}" for a in _PARSER_NEEDED
                    if "_ps" not in missing and not hasattr(client._ps, a)]
        if missing:
            raise InlineUnsupported(
                f"nats-py {getattr(client, '__version__', '?')} lacks {', '.join(missing)}")
        self.client = client
        self._handlers: dict[int, Handler] = {}
        self._flush_scheduled = False
        self._parsing = False
        handlers = self._handlers
        original = client._process_msg
        original_parse = client._ps.parse

        async def process_msg(sid, subject, reply, data, headers):
            handler = handlers.get(sid)
            if handler is None:
                return await original(sid, subject, reply, data, headers)
            try:
                handler(subject, reply, data, headers)
            except Exception:  # raised into the parser, it would end nats-py's read loop
                log.exception("inline handler for %s failed", subject)

        ps = client._ps

        async def parse(data: bytes = b""):
            self._parsing = True
            try:
                if ps.state == _AWAITING_CONTROL_LINE:
                    await self._parse_frames(data, handlers, original, original_parse)
                else:  # nats-py is inside a message: it finishes it, then we go on
                    await original_parse(data)
            finally:
                self._parsing = False
                self._flush()

        client._process_msg = process_msg
        ps.parse = parse

    async def _parse_frames(self, data: bytes, handlers, process_msg, control) -> None:
        """MSG and HMSG frames parsed here, control lines (PING, INFO, -ERR...)
        handed to nats-py's parser one at a time.

        nats-py's parser costs a regex, a dict and a coroutine per message: a
        third of the server's CPU in async publish, spent on store-acks. Here a
        frame is found with two searches and an inline one goes straight to its
        handler. A frame cut by the end of the read waits in nats-py's buffer,
        as nats-py keeps it, so a reconnect's parser reset drops it as before."""
        ps = self.client._ps
        if ps.buf:
            data = bytes(ps.buf) + data
            ps.buf.clear()
        pos, end = 0, len(data)
        while pos < end:
            i = data.find(b"\r\n", pos)
            if i < 0:
                break
            hmsg = data.startswith(b"HMSG ", pos)
            if not (hmsg or data.startswith(b"MSG ", pos)):
                # One whole control line, nothing buffered: exactly what nats-py
                # would have parsed at this point.
                await control(data[pos:i + 2])
                pos = i + 2
                continue
            args = data[pos + (5 if hmsg else 4):i].split()
            try:
                size = int(args[-1])
                hlen = int(args[-2]) if hmsg else 0
                sid = int(args[1])
            except (ValueError, IndexError):
                raise ProtocolError("nats: malformed MSG") from None
            start = i + 2
            if end < start + size + 2:
                break
            subject = args[0]
            reply = args[2] if len(args) == (5 if hmsg else 4) else b""
            headers = data[start:start + hlen] if hlen else None
            payload = data[start + hlen:start + size]
            pos = start + size + 2
            handler = handlers.get(sid)
            if handler is None:
                await process_msg(sid, subject, reply, payload, headers)
                continue
            try:
                handler(subject, reply, payload, headers)
            except Exception:  # raised here, it would end nats-py's read loop
                log.exception("inline handler for %s failed", subject)
        if pos < end:
            ps.buf.extend(data[pos:] if pos else data)

    async def subscribe(self, subject: str, handler: Handler, **kw):
        """A nats-py Subscription whose messages go to handler from the parser."""
        async def unused(msg):  # a callback makes nats-py keep no iterator queue
            pass
        sub = await self.client.subscribe(subject, cb=unused, **kw)
        self._handlers[sub._id] = handler
        return sub

    def forget(self, sub) -> None:
        self._handlers.pop(sub._id, None)

    def publish(self, subject: str, payload: bytes) -> None:
        """PUB without reply, in order with nats-py's own pending output."""
        self._queue(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    def publish_many(self, msgs: list[tuple[str, bytes]]) -> None:
        """publish() of each (subject, payload), in order, formatted as one write."""
        if msgs:
            self._queue(b"".join([b"PUB %s %d\r\n%s\r\n" % (s.encode(), len(p), p)
                                  for s, p in msgs]))

    def _queue(self, cmd: bytes) -> None:
        client = self.client
        client._pending.append(cmd)
        client._pending_data_size += len(cmd)
        if not self._parsing and not self._flush_scheduled:  # else written after the read
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is pending now, skipping nats-py's flusher task (one loop
        turn less per answer). Disconnected, it stays pending: nats-py sends
        its pending output after a reconnect."""
        self._flush_scheduled = False
        client = self.client
        if not client._pending or not client.is_connected:
            return
        transport = getattr(client, "_transport", None)
        if transport is None:
            return
        pending, client._pending = client._pending, []
        client._pending_data_size = 0
        transport.writelines(pending)
