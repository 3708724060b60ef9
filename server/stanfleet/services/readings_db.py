"""The readings database on SQLite (the default: one file, no server).

Idempotent by construction: a reading's key is (device, channel sequence),
so a redelivered message never makes a second row. Rows are written in
batches, one transaction each; the caller acks the messages only after
`commit_batch` returned. The schema is versioned (migrations.py).

Rejected payloads are bounded: a sample of each (DEFAULT_SAMPLE_BYTES), the
newest DEFAULT_REJECTS_PER_DEVICE per device and DEFAULT_REJECTS_TOTAL in
all; `reject_counts` counts every one. A device sending garbage costs a few
kilobytes, not the disk. The PostgreSQL store (readings_pg.py) keeps the
same bounds.
"""

from __future__ import annotations

import datetime as dt

from . import dbfile
from .migrations import LATEST, VERSION_TABLE, SchemaTooNew, pending
from .rejections import DEFAULT_SAMPLE_BYTES

DEFAULT_REJECTS_PER_DEVICE = 100  # newest rejected payloads kept per device
DEFAULT_REJECTS_TOTAL = 10_000  # and in all


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sqlite_path(url: str) -> str:
    """A plain path, or sqlite:///PATH."""
    return url[len("sqlite://"):] if url.startswith("sqlite:///") else url


class ReadingsDB:
    def __init__(self, path: str, rejects_per_device: int = DEFAULT_REJECTS_PER_DEVICE,
                 rejects_total: int = DEFAULT_REJECTS_TOTAL):
        # Several listener processes may share one file (WAL, busy timeout);
        # dbfile makes it, and its folder, private to the owner.
        # check_same_thread=False: the listener runs every call on its one DB thread.
        self.conn = dbfile.connect(sqlite_path(path), check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.rejects_per_device = rejects_per_device
        self.rejects_total = rejects_total
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

    def delete_older_than(self, cutoff: str) -> int:
        """Drop readings taken before `cutoff` (ISO-8601 UTC); how many went."""
        with self.conn:
            return self.conn.execute("DELETE FROM readings WHERE ts < ?", (cutoff,)).rowcount

    def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()
