"""Reads of the listener's readings database for the dashboard's tables and charts.

Plain SQL that SQLite and PostgreSQL both run (substr, GROUP BY, MIN/AVG/MAX,
ORDER BY ... LIMIT), on any DB-API connection; placeholders follow the
driver's paramstyle. Charts are downsampled here, on the server: readings are
grouped into buckets by a prefix of their ISO timestamp (second, minute,
10 minutes, hour, day), chosen so that a range yields at most MAX_POINTS
buckets, each with its min, mean and max. A week of one device is then one
index range scan on (device, ts) returning ~1,000 rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MAX_POINTS = 1200
# (seconds per bucket, ISO prefix length giving that bucket, the suffix that completes it)
BUCKETS = [(1, 19, "Z"), (10, 18, "0Z"), (60, 16, ":00Z"), (600, 15, "0:00Z"), (3600, 13, ":00:00Z"),
           (86400, 10, "T00:00:00Z")]


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str) -> float:
    return dt.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.timezone.utc).timestamp()


def bucket_for(span: float) -> tuple[int, int, str]:
    """The finest bucket that keeps a span of `span` seconds under MAX_POINTS."""
    for b in BUCKETS:
        if span / b[0] <= MAX_POINTS:
            return b
    return BUCKETS[-1]


@dataclass
class Series:
    """Columns, as the chart wants them: times (epoch seconds) and min/mean/max."""
    bucket: int
    t: list
    lo: list
    mean: list
    hi: list

    def as_json(self) -> dict:
        return {"bucket": self.bucket, "t": self.t, "min": self.lo, "mean": self.mean,
                "max": self.hi}


class ReadingsQueries:
    def __init__(self, conn, paramstyle: str = "qmark"):
        self.conn = conn
        self.mark = "?" if paramstyle == "qmark" else "%s"

    def _rows(self, sql: str, args: tuple = ()) -> list:
        cur = self.conn.cursor()
        try:
            cur.execute(sql.replace("?", self.mark), args)
            return cur.fetchall()
        finally:
            cur.close()

    def devices(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT device FROM devices ORDER BY device")]

    def latest(self, devices: list[str]) -> dict[str, tuple[str, float]]:
        """device -> (ts, temp) of its newest reading: one index lookup per device,
        which stays fast however long the table grows."""
        out = {}
        for d in devices:
            rows = self._rows("SELECT ts, temp FROM readings WHERE device = ? "
                              "ORDER BY ts DESC LIMIT 1", (d,))
            if rows:
                out[d] = (rows[0][0], rows[0][1])
        return out

    def series(self, device: str | None, start: float, end: float) -> Series:
        """min/mean/max per bucket between start and end (epoch seconds); every
        device together when `device` is None (the fleet at a glance)."""
        size, n, suffix = bucket_for(end - start)
        where, args = "ts >= ? AND ts < ?", (iso(start), iso(end))
        if device is not None:
            where, args = "device = ? AND " + where, (device, *args)
        rows = self._rows(
            f"SELECT substr(ts, 1, {n}) AS b, MIN(temp), AVG(temp), MAX(temp) "
            f"FROM readings WHERE {where} GROUP BY substr(ts, 1, {n}) ORDER BY 1", args)
        s = Series(size, [], [], [], [])
        for b, lo, mean, hi in rows:
            try:
                s.t.append(epoch(b + suffix))
            except ValueError:  # a timestamp the listener stored in another shape
                continue
            s.lo.append(round(lo, 3))
            s.mean.append(round(mean, 3))
            s.hi.append(round(hi, 3))
        return s
