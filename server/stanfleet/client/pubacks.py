"""Book-keeping of publishes waiting for their PubAck.

Hot path, so no future-per-message ``wait_for`` and no timer per message:
entries with the same ``ack_wait`` expire in the order they were added, so
they sit in one insertion-ordered dict per ``ack_wait`` value, and a single
loop timer, armed for the oldest deadline, expires the heads of those dicts.
A semaphore bounds the entries (STAN's MaxPubAcksInflight): publish blocks
while it is exhausted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from .errors import ErrTimeout

log = logging.getLogger("stanfleet.client")

AckHandler = Callable[[Any], Any]


class PendingAck:
    __slots__ = ("deadline", "future", "guid", "handler", "wait")

    def __init__(self, guid: str, wait: float, deadline: float, handler, future):
        self.guid = guid
        self.wait = wait
        self.deadline = deadline
        self.handler: AckHandler | None = handler
        self.future: asyncio.Future | None = future


class PubAckTracker:
    def __init__(self, max_inflight: int):
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(max_inflight)
        self._by_guid: dict[str, PendingAck] = {}
        self._by_wait: dict[float, dict[str, PendingAck]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._handler_tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._by_guid)

    def __contains__(self, guid: str) -> bool:
        return guid in self._by_guid

    @property
    def full(self) -> bool:
        return self._slots.locked()

    async def reserve(self) -> None:
        """Wait for a free slot; call before :meth:`add`."""
        await self._slots.acquire()

    def unreserve(self) -> None:
        """Give back a slot taken by :meth:`reserve` that was not used."""
        self._slots.release()

    def add(self, guid: str, ack_wait: float, handler: AckHandler | None) -> asyncio.Future | None:
        """Track ``guid``; returns the future to await when there is no handler."""
        future = None if handler is not None else self._loop.create_future()
        deadline = self._loop.time() + ack_wait
        entry = PendingAck(guid, ack_wait, deadline, handler, future)
        self._by_guid[guid] = entry
        queue = self._by_wait.get(ack_wait)
        if queue is None:
            queue = self._by_wait[ack_wait] = {}
        queue[guid] = entry
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)
        return future

    def pop(self, guid: str) -> PendingAck | None:
        """Stop tracking ``guid`` and free its slot; None if unknown."""
        entry = self._by_guid.pop(guid, None)
        if entry is None:
            return None
        queue = self._by_wait[entry.wait]
        del queue[guid]
        if not queue:
            del self._by_wait[entry.wait]
        self._slots.release()
        return entry

    # --- delivering results -------------------------------------------------

    async def resolve(self, guid: str, result: Any) -> bool:
        """Hand a PubAck (or an error) to whoever waits for ``guid``."""
        entry = self.pop(guid)
        if entry is None:
            return False
        if entry.future is not None:
            self._settle_future(entry.future, result)
        else:
            await call_handler(entry.handler, result, guid)
        return True

    def fail_all(self, make_error: Callable[[str], BaseException]) -> None:
        """Fail every pending publish (on close or connection loss)."""
        for guid in list(self._by_guid):
            self._fail(self.pop(guid), make_error(guid))
        self._disarm()

    def _fail(self, entry: PendingAck, error: BaseException) -> None:
        if entry.future is not None:
            self._settle_future(entry.future, error)
        else:
            # Handlers may be coroutines and we may be in a timer callback, so
            # run them as tasks; failures are rare, so the cost does not matter.
            task = self._loop.create_task(call_handler(entry.handler, error, entry.guid))
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)

    @staticmethod
    def _settle_future(future: asyncio.Future, result: Any) -> None:
        if future.done():  # the publisher was cancelled
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    # --- expiry -----------------------------------------------------------

    def _arm(self, when: float) -> None:
        self._disarm()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        next_deadline = None
        for wait in list(self._by_wait):
            queue = self._by_wait.get(wait)
            while queue:
                entry = next(iter(queue.values()))
                if entry.deadline > now:
                    if next_deadline is None or entry.deadline < next_deadline:
                        next_deadline = entry.deadline
                    break
                self.pop(entry.guid)
                log.debug("guid=%s pub ack timeout after %ss", entry.guid, entry.wait)
                self._fail(entry, ErrTimeout(guid=entry.guid))
                queue = self._by_wait.get(wait)
        if next_deadline is not None:
            self._arm(next_deadline)


async def call_handler(handler: AckHandler, arg: Any, guid: str) -> None:
    """Call an ack_handler, sync or async; its errors are logged, never raised."""
    try:
        result = handler(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("guid=%s ack_handler raised", guid)
