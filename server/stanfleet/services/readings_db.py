"""The readings database on SQLite (the default: one file, no server).

Idempotent by construction: a reading's key is (device, channel sequence),
so a redelivered message never makes a second row. Rows are written in
batches, one transaction each; the caller acks the messages only after
`commit_batch` returned. The schema is versioned (migrations.py).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3

from .migrations import LATEST, VERSION_TABLE, SchemaTooNew, pending


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sqlite_path(url: str) -> str:
    """A plain path, or sqlite:///PATH."""
    return url[len("sqlite://"):] if url.startswith("sqlite:///") else url


class ReadingsDB:
    def __init__(self, path: str):
        path = sqlite_path(path)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        # Several listener processes may share one file: WAL lets readers and
        # one writer proceed together, and the busy timeout makes writers queue.
        # check_same_thread=False: the listener runs every call on its one DB thread.
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to LATEST; BEGIN IMMEDIATE keeps two starting
        listeners from migrating at once."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            current = self._version()
            if current > LATEST:
                raise SchemaTooNew(current)
            for step in pending(current):
                for sql in step.sqlite:
                    self.conn.execute(sql)
                self.conn.execute("DELETE FROM schema_version")
                self.conn.execute("INSERT INTO schema_version VALUES (?)", (step.version,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _version(self) -> int:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        self.conn.execute(VERSION_TABLE)
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row[0] is not None:
            return row[0]
        return 1 if "readings" in tables else 0  # made before versioning: version 1

    def schema_version(self) -> int:
        return self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0

    def close(self) -> None:
        self.conn.close()

    def commit_batch(self, readings, rejects) -> None:
        """readings: (device, seq, ts, temp); rejects: (device, seq, raw, reason)."""
        now = now_iso()
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
            self.conn.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (device, now_iso()))

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

    def delete_older_than(self, cutoff: str) -> int:
        """Drop readings taken before `cutoff` (ISO-8601 UTC); how many went."""
        with self.conn:
            return self.conn.execute("DELETE FROM readings WHERE ts < ?", (cutoff,)).rowcount

    def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()
