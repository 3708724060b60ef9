"""The readings database (SQLite).

Idempotent by construction: a reading's key is (device, channel sequence),
so a redelivered message never makes a second row. Rows are written in
batches, one transaction each; the caller acks the messages only after
`commit_batch` returned.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3

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
CREATE TABLE IF NOT EXISTS devices (
    device     TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL
);
"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ReadingsDB:
    def __init__(self, path: str):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        # Several listener processes may share one file: WAL lets readers and
        # one writer proceed together, and the busy timeout makes writers queue.
        # check_same_thread=False: the listener runs every call on its one DB thread.
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
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
            self.conn.executemany(
                "INSERT OR IGNORE INTO rejects VALUES (?, ?, ?, ?, ?)",
                [(d, s, raw, why, now) for d, s, raw, why in rejects])

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
