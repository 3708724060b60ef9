"""Rejected device messages: what is kept of them, and how they are logged.

Whatever a device sends that is not a valid message is recorded and acked,
never retried: a retry would bring the same bytes back forever. What is kept
is bounded, so a device cannot fill the disk or the log with garbage: a
sample of the bytes (the first DEFAULT_SAMPLE_BYTES), their size, the reason,
and a count per device (readings_db bounds the rows per device and in all).
The log gets one line per device per DEFAULT_LOG_INTERVAL seconds, saying
how many were rejected since the last line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

DEFAULT_SAMPLE_BYTES = 256
DEFAULT_LOG_INTERVAL = 60.0  # seconds between two log lines about one device
MAX_REASON = 200  # characters


@dataclass(frozen=True)
class Rejection:
    device: str
    seq: int
    sample: bytes  # the first DEFAULT_SAMPLE_BYTES of the payload
    size: int  # of the whole payload
    reason: str  # printable; says the size when the sample is cut


def safe_text(text: str, limit: int = MAX_REASON) -> str:
    """Printable characters only, at most ``limit`` of them: a reason quotes
    device bytes and goes to a terminal (no escape sequences, no bidi
    overrides), a log and a database (no lone surrogates, which UTF-8 cannot
    encode). Anything else is shown as its Python escape."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])


def rejection(device: str, seq: int, payload: bytes, reason: str,
              sample_bytes: int = DEFAULT_SAMPLE_BYTES) -> Rejection:
    size = len(payload)
    why = safe_text(reason)
    if size > sample_bytes:
        why += f" ({size} bytes, first {sample_bytes} kept)"
    return Rejection(device, seq, bytes(payload[:sample_bytes]), size, why)


class RejectLog:
    """Logs a device's rejections once per interval, with the count since the last line."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_LOG_INTERVAL,
                 clock=time.monotonic):
        self.log = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}  # device -> when its last line was logged
        self._quiet: dict[str, int] = {}  # device -> rejections not logged since

    def record(self, r: Rejection) -> None:
        now = self.clock()
        last = self._last.get(r.device)
        if last is not None and now - last < self.interval:
            self._quiet[r.device] = self._quiet.get(r.device, 0) + 1
            return
        more = self._quiet.pop(r.device, 0)
        self._last[r.device] = now
        self.log.warning("device=%s seq=%d rejected: %s%s", r.device, r.seq, r.reason,
                         f" (and {more} more since the last line)" if more else "")
