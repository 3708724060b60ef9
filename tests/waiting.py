"""Waiting for conditions that offer no event to await."""

from __future__ import annotations

import asyncio
import time


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll an async predicate until it holds; fail the test if it never does.

    Only for state the system exposes no event for (a client declared dead, an
    ack recorded by JetStream). Where an event exists, await it instead."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {getattr(predicate, '__name__', '')} not reached "
                                 f"within {timeout}s")
        await asyncio.sleep(interval)
