"""Long-running commands stop cleanly on Ctrl-C (SIGINT) and SIGTERM."""

from __future__ import annotations

import asyncio
import signal


def stop_event() -> asyncio.Event:
    """An event set by the first SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
