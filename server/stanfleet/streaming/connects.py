"""Connect requests under a storm: bounded, shed when too late, retries joined.

Registering a session costs a liveness check of any old session and a KV
write. When thousands of devices connect at once those queue, answers come
after the client's own timeout, the client retries, and each retry of a
session that was meanwhile registered "replaces" it: another KV purge and
write, which makes the queue longer (measured at 10,000 devices: thousands of
replacements, no convergence). So:

- at most `slots` registrations run at once, in arrival order;
- a request that waited longer than `wait` for its slot is dropped unanswered:
  its client has given up (stan.go's default connect wait is 2 s), an answer
  would be late and its retry is on the way, so the KV write is saved;
- a retry of a connect still in the queue (same clientID, conn_id and
  heartbeat inbox) joins it: one registration answers both requests.

A retry of a session already registered is answered by the server itself
(server.py), without a replacement. A connect with the same clientID but
another conn_id or inbox keeps Go's rule: the old session is pinged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

log = logging.getLogger("stanfleet.streaming.connects")

DEFAULT_CONNECT_WAIT = 2.0  # s; stan.go's DefaultConnectWait, the shortest client timeout we know
DEFAULT_CONNECT_SLOTS = 64  # registrations at once (each a KV write, maybe a liveness check)
DEFAULT_SHED_LOG_INTERVAL = 5.0  # s between "dropped late connects" lines


@dataclass(eq=False)
class PendingConnect:
    client_id: str
    conn_id: bytes
    hb_inbox: str
    replies: list[str] = field(default_factory=list)
    arrived: float = field(default_factory=time.monotonic)  # the latest request's arrival

    def same_session(self, conn_id: bytes, hb_inbox: str) -> bool:
        return bool(conn_id) and conn_id == self.conn_id and hb_inbox == self.hb_inbox


class ConnectQueue:
    def __init__(self, wait: float = DEFAULT_CONNECT_WAIT, slots: int = DEFAULT_CONNECT_SLOTS):
        self.wait = wait
        self.pending: dict[str, PendingConnect] = {}  # clientID -> its connect in progress
        self._slots = asyncio.Semaphore(slots)
        self.shed = 0  # requests dropped for waiting too long, since start
        self._shed_logged = (0.0, 0)  # (when, count then)

    def begin(self, client_id: str, conn_id: bytes, hb_inbox: str, reply: str) -> PendingConnect:
        p = PendingConnect(client_id, conn_id, hb_inbox, [reply] if reply else [])
        self.pending[client_id] = p
        return p

    def join(self, p: PendingConnect, reply: str) -> None:
        """A retry of p: answered with it, and p counts as asked again now."""
        if reply:
            p.replies.append(reply)
        p.arrived = time.monotonic()

    def end(self, p: PendingConnect) -> None:
        if self.pending.get(p.client_id) is p:
            del self.pending[p.client_id]

    @asynccontextmanager
    async def slot(self, p: PendingConnect):
        """A registration slot; yields False if p waited past `wait` (drop it)."""
        async with self._slots:
            in_time = time.monotonic() - p.arrived <= self.wait
            if not in_time:
                self._note_shed()
            yield in_time

    def _note_shed(self) -> None:
        self.shed += 1
        when, count = self._shed_logged
        now = time.monotonic()
        if now - when >= DEFAULT_SHED_LOG_INTERVAL:
            log.warning("dropped %d connect requests that waited over %.1f s for registration "
                        "(%d since start): their clients retry", self.shed - count, self.wait,
                        self.shed)
            self._shed_logged = (now, self.shed)
