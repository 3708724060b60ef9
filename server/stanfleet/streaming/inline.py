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

This reaches into nats-py internals (`_process_msg`, the parser `_ps`,
`_pending`, the transport); `InlineSubscriptions` checks they are there and refuses to start
otherwise (InlineUnsupported), so a nats-py that changes them fails loudly at
start-up, not silently in the hot path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..errors import CommandError

log = logging.getLogger("stanfleet.streaming.inline")

# (subject, reply, data, raw header block or None) -> None, all bytes
Handler = Callable[[bytes, bytes, bytes, "bytes | None"], None]

_NEEDED = ("_process_msg", "_ps", "_pending", "_pending_data_size", "_transport", "subscribe")


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

        async def parse(data: bytes = b""):
            self._parsing = True
            try:
                await original_parse(data)
            finally:
                self._parsing = False
                self._flush()

        client._process_msg = process_msg
        client._ps.parse = parse

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
        client = self.client
        cmd = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
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
