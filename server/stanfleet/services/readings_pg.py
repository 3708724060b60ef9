"""The readings database on PostgreSQL (database URL postgresql://...).

Same schema, same key and same batch-then-ack contract as the SQLite store
(readings_db.py), so several listener instances on several machines share
one database. Migrations take a transaction-scoped advisory lock, so
listeners started together migrate once.
"""

from __future__ import annotations

import psycopg

from .migrations import LATEST, VERSION_TABLE, SchemaTooNew, pending
from .readings_db import now_iso

DEFAULT_CONNECT_TIMEOUT = 5  # seconds: a start against a dead database fails fast
MIGRATION_LOCK = 0x5354414E  # advisory lock key ("STAN"), held while migrating


class DatabaseError(Exception):
    """The PostgreSQL database cannot be reached or used; the message says why in one line."""


def connect(url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, connect_timeout=DEFAULT_CONNECT_TIMEOUT, autocommit=True)
    except psycopg.Error as e:
        raise DatabaseError(f"cannot reach PostgreSQL at {redact(url)}: "
                            f"{_first_line(e)}") from None


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}{at}{host}"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class PostgresReadings:
    def __init__(self, url: str):
        self.url = url
        self.conn = connect(url)
        self.migrate()

    def migrate(self) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            current = self._version()
            if current > LATEST:
                raise SchemaTooNew(current)
            for step in pending(current):
                for sql in step.postgres:
                    self.conn.execute(sql)
                self.conn.execute("DELETE FROM schema_version")
                self.conn.execute("INSERT INTO schema_version VALUES (%s)", (step.version,))

    def _version(self) -> int:
        had_readings = self.conn.execute(
            "SELECT to_regclass('readings') IS NOT NULL").fetchone()[0]
        self.conn.execute(VERSION_TABLE)
        found = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if found is not None:
            return found
        return 1 if had_readings else 0

    def schema_version(self) -> int:
        return self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0

    def close(self) -> None:
        self.conn.close()

    def _reconnect_if_lost(self) -> None:
        """After a database restart or failover the old connection is dead:
        the next call opens a new one instead of failing forever."""
        if self.conn.closed or self.conn.broken:
            self.conn.close()
            self.conn = connect(self.url)

    def commit_batch(self, readings, rejects) -> None:
        """readings: (device, seq, ts, temp); rejects: (device, seq, raw, reason).
        executemany pipelines the rows: one round trip per batch, not per row."""
        self._reconnect_if_lost()
        now = now_iso()
        with self.conn.transaction(), self.conn.cursor() as cur:
            if readings:
                cur.executemany(
                    "INSERT INTO readings VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(d, s, ts, t, now) for d, s, ts, t in readings])
            if rejects:
                cur.executemany(
                    "INSERT INTO rejects VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(d, s, raw, why, now) for d, s, raw, why in rejects])

    def add_device(self, device: str) -> None:
        self.conn.execute("INSERT INTO devices VALUES (%s, %s) ON CONFLICT DO NOTHING",
                          (device, now_iso()))

    def devices(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT device FROM devices ORDER BY device")]

    def readings(self, device: str, since: str | None = None) -> list[tuple]:
        q = "SELECT seq, ts, temp FROM readings WHERE device = %s"
        args: list = [device]
        if since:
            q += " AND ts >= %s"
            args.append(since)
        return [tuple(r) for r in self.conn.execute(q + " ORDER BY seq", args)]

    def rejects(self, device: str | None = None) -> list[tuple]:
        q = "SELECT device, seq, raw, reason FROM rejects"
        if device:
            rows = self.conn.execute(q + " WHERE device = %s ORDER BY seq", (device,))
        else:
            rows = self.conn.execute(q + " ORDER BY device, seq")
        return [(d, s, bytes(raw), why) for d, s, raw, why in rows]

    def count(self, device: str | None = None) -> int:
        if device:
            return self.conn.execute("SELECT COUNT(*) FROM readings WHERE device = %s",
                                     (device,)).fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    def delete_older_than(self, cutoff: str) -> int:
        """Drop readings taken before `cutoff` (ISO-8601 UTC); how many went."""
        return self.conn.execute("DELETE FROM readings WHERE ts < %s", (cutoff,)).rowcount

    def ping(self) -> None:
        self._reconnect_if_lost()
        self.conn.execute("SELECT 1").fetchone()
