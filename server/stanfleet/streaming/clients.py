"""Connected STAN clients and their liveness.

The server heartbeats each client on its heartbeat inbox; after `hb_fail_count`
missed heartbeats the client is declared dead and removed (its durables are
kept). A protocol-1 client also pings us, which counts as a sign of life: a
client seen within the heartbeat interval is not asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from .handshake import client_record

log = logging.getLogger("stanfleet.streaming.clients")

DEFAULT_HB_SLICES = 30  # a heartbeat round is sent in this many slices over the interval


@dataclass(eq=False)
class ClientInfo:
    client_id: str
    conn_id: bytes
    hb_inbox: str
    protocol: int
    ping_interval: int
    ping_max_out: int
    created: float = field(default_factory=time.time)
    hb_failures: int = 0
    last_seen: float = field(default_factory=time.monotonic)

    def record(self, owner: str | None) -> dict:
        """What state.py keeps of the session (server._restore reads it back)."""
        return client_record(self.client_id, self.conn_id, self.hb_inbox, self.protocol,
                             self.ping_interval, self.ping_max_out, self.created, owner)


class ClientRegistry:
    def __init__(self, nc: NATS, *, hb_interval: float, hb_timeout: float, hb_fail_count: int,
                 on_dead):
        self.nc = nc
        self.hb_interval = hb_interval
        self.hb_timeout = hb_timeout
        self.hb_fail_count = hb_fail_count
        self._on_dead = on_dead  # async (ClientInfo) -> None
        self.clients: dict[str, ClientInfo] = {}
        self.by_conn_id: dict[bytes, ClientInfo] = {}
        self._task: asyncio.Task | None = None
        self._slices: set[asyncio.Task] = set()  # heartbeat slices in flight

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat_loop())

    async def stop(self) -> None:
        for t in list(self._slices):
            t.cancel()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def add(self, info: ClientInfo) -> None:
        self.clients[info.client_id] = info
        if info.conn_id:
            self.by_conn_id[info.conn_id] = info

    def remove(self, client_id: str) -> ClientInfo | None:
        info = self.clients.pop(client_id, None)
        if info is not None and info.conn_id and self.by_conn_id.get(info.conn_id) is info:
            self.by_conn_id.pop(info.conn_id, None)
        return info

    def check(self, client_id: str, conn_id: bytes) -> str:
        """'' if (client_id, conn_id) is a current session, else the error to return."""
        info = self.clients.get(client_id)
        if info is None:
            return "stan: unknown clientID"
        if conn_id and info.conn_id and conn_id != info.conn_id:
            return "client has been replaced or is no longer registered"
        return ""

    def heard_from(self, client_id: str, conn_id: bytes) -> None:
        """A publish its session may make, naming its conn_id: the client is
        alive as a ping shows, so it is spared a heartbeat (and our firmware
        skips its ping after a PubAck)."""
        info = self.clients.get(client_id)
        if info is not None and conn_id and conn_id == info.conn_id:
            self.seen(info)

    def seen(self, info: ClientInfo) -> None:
        info.hb_failures = 0
        info.last_seen = time.monotonic()

    async def is_alive(self, info: ClientInfo, timeout: float) -> bool:
        try:
            await self.nc.request(info.hb_inbox, b"", timeout=timeout)
            return True
        except (NatsTimeout, NoRespondersError, asyncio.TimeoutError):
            return False

    async def _heartbeat_loop(self) -> None:
        # Spread over the interval in slices: 10,000 clients heartbeated in one
        # burst stalled every PubAck behind 10,000 requests every 30 s.
        while True:
            clients = list(self.clients.values())
            slices = max(1, min(DEFAULT_HB_SLICES, len(clients)))
            step = self.hb_interval / slices
            for i in range(slices):
                await asyncio.sleep(step)
                # A client that pinged us within the interval is alive: asking it
                # too was 10,000 requests every 30 s for a fleet that pings every 5 s.
                quiet = time.monotonic() - self.hb_interval
                batch = [c for c in clients[i::slices] if c.last_seen <= quiet]
                if batch:
                    # Not awaited: a slice with dead clients waits hb_timeout for
                    # them, and must not hold back the slices after it.
                    t = asyncio.create_task(self._heartbeat_all(batch))
                    self._slices.add(t)
                    t.add_done_callback(self._slices.discard)

    async def _heartbeat_all(self, batch: list) -> None:
        await asyncio.gather(*(self._heartbeat(c) for c in batch))

    async def _heartbeat(self, info: ClientInfo) -> None:
        if await self.is_alive(info, self.hb_timeout):
            self.seen(info)
            return
        if self.clients.get(info.client_id) is not info:
            return  # closed or replaced meanwhile
        info.hb_failures += 1
        log.debug("client=%s missed heartbeat %d/%d", info.client_id, info.hb_failures,
                  self.hb_fail_count)
        if info.hb_failures >= self.hb_fail_count:
            log.warning("client=%s declared dead after %d missed heartbeats", info.client_id,
                        info.hb_failures)
            self.remove(info.client_id)
            try:
                await self._on_dead(info)
            except Exception:
                log.exception("client=%s cleanup failed", info.client_id)
