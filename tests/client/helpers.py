"""Helpers shared by the client integration tests."""

from __future__ import annotations

import asyncio
import itertools

from stanfleet.client import Client, Msg

DEFAULT_WAIT = 15.0  # generous upper bound for events; never a timing assertion

_ids = itertools.count(1)


def new_client_id(prefix: str = "c") -> str:
    return f"{prefix}-{next(_ids)}"


async def connect(stan, client_id: str | None = None, cls=Client, **kw) -> Client:
    """A client that owns its NATS connection to the test server."""
    sc = cls()
    await sc.connect(stan.cluster_id, client_id or new_client_id(), servers=[stan.nats_url], **kw)
    return sc


class Collector:
    """A subscription callback that records messages and lets a test await a count."""

    def __init__(self, ack_with: Client | None = None):
        self.msgs: list[Msg] = []
        self._ack_with = ack_with
        self._changed = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        self.msgs.append(msg)
        if self._ack_with is not None:
            await self._ack_with.ack(msg)
        self._changed.set()

    @property
    def seqs(self) -> list[int]:
        return [m.seq for m in self.msgs]

    @property
    def payloads(self) -> list[bytes]:
        return [m.data for m in self.msgs]

    async def wait_for(self, predicate, timeout: float = DEFAULT_WAIT) -> None:
        async def waiter():
            while not predicate(self.msgs):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(waiter(), timeout)

    async def wait_count(self, n: int, timeout: float = DEFAULT_WAIT) -> None:
        await self.wait_for(lambda msgs: len(msgs) >= n, timeout)


async def publish_all(sc: Client, channel: str, payloads) -> list:
    return [await sc.publish(channel, p) for p in payloads]
