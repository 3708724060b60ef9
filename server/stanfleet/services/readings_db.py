"""The readings database (SQLite).

Idempotent by construction: a reading's key is (device, channel sequence),
so a redelivered message never makes a second row. Rows are written in
batches, one transaction each; the caller acks the messages only after
`commit_batch` returned.

Rejected payloads are bounded: a sample of each (DEFAULT_SAMPLE_BYTES), the
newest DEFAULT_REJECTS_PER_DEVICE per device and DEFAULT_REJECTS_TOTAL in
all; `reject_counts` counts every one. A device sending garbage costs a few
kilobytes, not the disk.
"""

from __future__ import annotations

import datetime as dt

from . import dbfile
from .rejections import DEFAULT_SAMPLE_BYTES

DEFAULT_REJECTS_PER_DEVICE = 100  # newest rejected payloads kept per device
DEFAULT_REJECTS_TOTAL = 10_000  # and in all

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    ts       TEXT    NOT NULL,
    temp     REAL    NOT NULL,
    received TEXT    NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS readings_by_time ON readings (device, ts);
CREATE TABLE IF NOT EXISTS rejects (
    device   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    raw      BLOB    NOT NULL,
    reason   TEXT    NOT NULL,
    received TEXT    NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS reject_counts (
    device   TEXT    PRIMARY KEY,
    rejected INTEGER NOT NULL,
    last     TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device     TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL
);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ReadingsDB:
    def __init__(self, path: str, rejects_per_device: int = DEFAULT_REJECTS_PER_DEVICE,
                 rejects_total: int = DEFAULT_REJECTS_TOTAL):
        # Several listener processes may share one file (WAL, busy timeout).
        # check_same_thread=False: the listener runs every call on its one DB thread.
        self.conn = dbfile.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.rejects_per_device = rejects_per_device
        self.rejects_total = rejects_total
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def commit_batch(self, readings, rejects) -> None:
        """readings: (device, seq, ts, temp); rejects: (device, seq, raw, reason)."""
        now = _now()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR IGNORE INTO readings VALUES (?, ?, ?, ?, ?)",
                [(d, s, ts, t, now) for d, s, ts, t in readings])
            if rejects:
                self._add_rejects(rejects, now)

    def _add_rejects(self, rejects, now: str) -> None:
        for d, s, raw, why in rejects:
            cur = self.conn.execute("INSERT OR IGNORE INTO rejects VALUES (?, ?, ?, ?, ?)",
                                    (d, s, bytes(raw[:DEFAULT_SAMPLE_BYTES]), why, now))
            if cur.rowcount:  # a redelivery is not counted twice
                self.conn.execute(
                    "INSERT INTO reject_counts VALUES (?, 1, ?) ON CONFLICT (device) "
                    "DO UPDATE SET rejected = rejected + 1, last = excluded.last", (d, now))
        for d in {r[0] for r in rejects}:
            self.conn.execute(
                "DELETE FROM rejects WHERE device = ? AND seq NOT IN (SELECT seq FROM rejects "
                "WHERE device = ? ORDER BY seq DESC LIMIT ?)", (d, d, self.rejects_per_device))
        excess = self.conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] \
            - self.rejects_total
        if excess > 0:
            self.conn.execute("DELETE FROM rejects WHERE rowid IN (SELECT rowid FROM rejects "
                              "ORDER BY received, rowid LIMIT ?)", (excess,))

    def reject_counts(self) -> dict[str, int]:
        """Every payload each device had rejected, including those no longer kept."""
        return dict(self.conn.execute("SELECT device, rejected FROM reject_counts"))

    def add_device(self, device: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (device, _now()))

    def devices(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT device FROM devices ORDER BY device")]

    def readings(self, device: str, since: str | None = None) -> list[tuple]:
        q = "SELECT seq, ts, temp FROM readings WHERE device = ?"
        args: list = [device]
        if since:
            q += " AND ts >= ?"
            args.append(since)
        return list(self.conn.execute(q + " ORDER BY seq", args))

    def latest(self, device: str) -> tuple | None:
        """(seq, ts, temp) of the device's newest reading: one index lookup,
        however many readings it sent (up's table asks every second)."""
        return self.conn.execute("SELECT seq, ts, temp FROM readings WHERE device = ? "
                                 "ORDER BY seq DESC LIMIT 1", (device,)).fetchone()

    def rejects(self, device: str | None = None) -> list[tuple]:
        q = "SELECT device, seq, raw, reason FROM rejects"
        if device:
            return list(self.conn.execute(q + " WHERE device = ? ORDER BY seq", (device,)))
        return list(self.conn.execute(q + " ORDER BY device, seq"))

    def count(self, device: str | None = None) -> int:
        if device:
            return self.conn.execute("SELECT COUNT(*) FROM readings WHERE device = ?",
                                     (device,)).fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
