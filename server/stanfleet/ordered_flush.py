"""nats-py's flush() made to keep its promise: when it returns, nats-server
has processed everything the client queued before it.

nats-py (2.13 to 2.16 at least) writes flush()'s PING straight to the socket,
ahead of the commands still queued for its flusher task. So a SUB made just
before flush() can reach nats-server after the PONG. Measured here: another
connection's publish, sent right after subscribe() + flush() returned, found
no subscriber about once in 300 tries under load. That made tests flaky, and
it let the streaming server say "ready" before its request subscriptions were
in place. install() queues the PING behind those commands, as nats-py's
predecessor did after the same bug (nats.py2 pull request 24).

The method is replaced only while it still writes the PING directly, so a
nats-py that fixes this is left as it is.
"""

from __future__ import annotations

import asyncio
import inspect

_DIRECT_WRITE = "self._transport.write(PING_PROTO)"


def install() -> bool:
    """Queue flush()'s PING behind pending commands (once per process);
    True if nats-py's client now does so."""
    from nats.aio import client as nats_client

    cls = nats_client.Client
    if getattr(cls._send_ping, "_stanfleet_ordered", False):
        return True
    try:
        source = inspect.getsource(cls._send_ping)
    except (OSError, TypeError):  # no source to check: leave nats-py alone
        return False
    if _DIRECT_WRITE not in source:
        return False
    ping = nats_client.PING_PROTO

    async def _send_ping(self, future: asyncio.Future | None = None) -> None:
        if future is None:
            future = asyncio.Future()
        self._pongs.append(future)
        self._pending.append(ping)
        self._pending_data_size += len(ping)
        await self._flush_pending()

    _send_ping._stanfleet_ordered = True
    cls._send_ping = _send_ping
    return True
