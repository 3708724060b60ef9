"""The embedded nats-server of a streaming server that was killed.

When we die, even by SIGKILL, our nats-server child gets SIGTERM (broker's
die_with_parent) and shuts down in order. That order is slow: JetStream stops
its consumers one after another, about 10 ms each (measured: 63 s for 6,000
consumers, all in "JetStream Shutdown"), holding the client port, so a
successor with 10,000 devices (20,000 consumers) could not start for minutes.
Writing the consumers' state is not what takes the time: a running
JetStream writes a consumer's acks to its file shortly after they change
(tests/streaming/test_restart.py: acks 1 s old survived a SIGKILL). So a
successor on the same store gives the predecessor DEFAULT_GRACE to write
what it had, then kills it and takes the port.

SIGKILL as the parent-death signal was tried and refused: acks recorded
just before the kill were lost (an acked delivery came again, and the
others lost their redelivered flag), which an orderly stop never does.

The data dir records "<nats-server pid> <owner pid>"; a nats-server is
reclaimed only if its owner is gone and its command line names our store.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger("stanfleet.streaming")

OWNER_FILE = "nats-server.owner"
DEFAULT_GRACE = 2.0  # s; twice what was measured to be enough for the acks to be written
DEFAULT_KILL_WAIT = 10.0  # s for the kernel to end a SIGKILLed process
DEFAULT_POLL = 0.02  # s; a process that is not our child offers no event to await


def record(data_dir: str, nats_pid: int) -> None:
    with open(os.path.join(data_dir, OWNER_FILE), "w") as f:
        f.write(f"{nats_pid} {os.getpid()}\n")


def reclaim(data_dir: str, store_dir: str, grace: float = DEFAULT_GRACE) -> None:
    """End the nats-server a dead predecessor left shutting down on our store."""
    try:
        with open(os.path.join(data_dir, OWNER_FILE)) as f:
            nats_pid, owner = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return
    if _running(owner) or not _running(nats_pid) or not _serves(nats_pid, store_dir):
        return
    log.warning("the nats-server (pid %d) of a killed streaming server still holds the "
                "store; ending it after %.1f s", nats_pid, grace)
    if not _ends(nats_pid, grace):
        try:
            os.kill(nats_pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _ends(nats_pid, DEFAULT_KILL_WAIT)


def _ends(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(DEFAULT_POLL)
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow or absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _serves(pid: int, store_dir: str) -> bool:
    """A nats-server on our JetStream store, not a process that reused the pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return bool(args) and os.path.basename(args[0]) == "nats-server" and \
        os.path.abspath(store_dir) in (os.path.abspath(a) for a in args[1:] if a)
