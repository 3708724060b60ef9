"""Process lifecycle: long-running commands stop cleanly on Ctrl-C (SIGINT) and
SIGTERM, and the children we start die with us."""

from __future__ import annotations

import signal


def stop_event():
    """An asyncio.Event set by the first SIGINT or SIGTERM (call inside the running loop)."""
    import asyncio  # here: the broker's die_with_parent must not cost an asyncio import

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def die_with_parent(sig: int) -> None:
    """Run in a child (``preexec_fn``): the kernel sends it ``sig`` when we die,
    even by SIGKILL, so no nats-server or simulated board outlives its parent
    and holds a port or a flash directory the next run needs."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass  # not Linux: stop() must end the child
