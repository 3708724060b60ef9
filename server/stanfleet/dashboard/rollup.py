"""The fleet at a glance over long ranges: 10-minute buckets over every device, kept in memory.

A week of the whole fleet is every reading of that week (2 million rows at
1,000 devices reporting every 5 minutes): too many to aggregate per page
view. Buckets that ended more than SETTLE seconds ago are computed once and
kept; a request then scans only the newest minutes. Readings can arrive late
(a device buffers while offline and sends in order when back), so buckets of
the last RECENT seconds are recomputed every RECHECK seconds; a reading older
than that when it arrives shows in the hour and day charts at once, in the
week chart only after a restart.
"""

from __future__ import annotations

import threading
import time

from .queries import ReadingsQueries, Series, epoch, iso

BUCKET = 600  # seconds: the week chart's bucket (queries.bucket_for)
PREFIX = 15  # ISO prefix length of a 10-minute bucket
SETTLE = 120  # a bucket is cached once it ended this long ago
RECENT = 86400  # buckets this young are recomputed every RECHECK seconds
RECHECK = 600


class FleetRollup:
    def __init__(self):
        self._buckets: dict[float, tuple[float, float, int, float]] = {}  # start -> lo, sum, n, hi
        self._lo = self._hi = None  # cached, complete range [lo, hi) in epoch seconds
        self._checked: float | None = None  # when recent buckets were last read again
        self._lock = threading.Lock()  # one scan at a time; others wait for its result

    def series(self, queries: ReadingsQueries, start: float, end: float,
               now: float | None = None) -> Series:
        now = time.time() if now is None else now
        start, end = _floor(start), _floor(end) + BUCKET
        settled = _floor(now - SETTLE)
        with self._lock:
            if self._checked is None:
                self._checked = now
            elif now - self._checked > RECHECK and self._hi is not None:
                self._forget_after(_floor(now - RECENT))
                self._checked = now
            if start < settled:
                self._cover(queries, start, min(end, settled))
            cached = {t: v for t, v in self._buckets.items() if start <= t < min(end, settled)}
        if end > settled:  # the newest minutes: always read live
            cached.update(_scan(queries, max(start, settled), end))
        s = Series(BUCKET, [], [], [], [])
        for t in sorted(cached):
            lo, total, n, hi = cached[t]
            s.t.append(t)
            s.lo.append(round(lo, 3))
            s.mean.append(round(total / n, 3))
            s.hi.append(round(hi, 3))
        return s

    def _cover(self, queries, start: float, end: float) -> None:
        if self._lo is None:
            self._buckets.update(_scan(queries, start, end))
            self._lo, self._hi = start, end
            return
        if start < self._lo:
            self._buckets.update(_scan(queries, start, self._lo))
            self._lo = start
        if end > self._hi:
            self._buckets.update(_scan(queries, self._hi, end))
            self._hi = end

    def _forget_after(self, t: float) -> None:
        for k in [k for k in self._buckets if k >= t]:
            del self._buckets[k]
        self._hi = max(self._lo, min(self._hi, t))


def _floor(t: float) -> float:
    return float(int(t // BUCKET) * BUCKET)


def _scan(queries: ReadingsQueries, start: float, end: float) -> dict:
    rows = queries._rows(
        f"SELECT substr(ts, 1, {PREFIX}), MIN(temp), SUM(temp), COUNT(*), MAX(temp) "
        f"FROM readings WHERE ts >= ? AND ts < ? GROUP BY substr(ts, 1, {PREFIX})",
        (iso(start), iso(end)))
    out = {}
    for b, lo, total, n, hi in rows:
        try:
            out[epoch(b + "0:00Z")] = (lo, total, n, hi)
        except ValueError:  # a timestamp stored in another shape
            continue
    return out
