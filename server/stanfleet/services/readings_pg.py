"""The readings database on PostgreSQL (database URL postgresql://...).

Same schema, same key, same batch-then-ack contract and the same bounds on
rejected payloads as the SQLite store (readings_db.py), so several listener
instances on several machines share one database. Migrations take a transaction-scoped advisory lock, so
listeners started together migrate once.

Every call goes through `_call`: a connection the server dropped (a restart,
a failover, an idle timeout) is replaced, and the call tried once more, so a
listener whose database came back carries on without a restart of its own.
"""

from __future__ import annotations

import psycopg

from .migrations import LATEST, VERSION_TABLE, SchemaTooNew, pending
from .readings_db import DEFAULT_REJECTS_PER_DEVICE, DEFAULT_REJECTS_TOTAL, now_iso
from .rejections import DEFAULT_SAMPLE_BYTES

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
    def __init__(self, url: str, rejects_per_device: int = DEFAULT_REJECTS_PER_DEVICE,
                 rejects_total: int = DEFAULT_REJECTS_TOTAL):
        self.url = url
        self.rejects_per_device = rejects_per_device
        self.rejects_total = rejects_total
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

    def _call(self, work):
        """work(conn), on a live connection. psycopg only learns that the server
        dropped it when a statement fails (then `broken` is set): that failure
        is tried once more on a new connection. Every call here may be repeated
        (inserts are ON CONFLICT DO NOTHING; a transaction either committed or
        not), and a database still away raises DatabaseError from connect()."""
        self._reconnect_if_lost()
        try:
            return work(self.conn)
        except psycopg.OperationalError:
            if not self.conn.broken:
                raise
        self._reconnect_if_lost()
        return work(self.conn)

    def commit_batch(self, readings, rejects) -> None:
        """readings: (device, seq, ts, temp); rejects: (device, seq, raw, reason).
        executemany pipelines the rows: one round trip per batch, not per row."""
        self._call(lambda conn: self._commit_batch(conn, readings, rejects))

    def _commit_batch(self, conn: psycopg.Connection, readings, rejects) -> None:
        now = now_iso()
        with conn.transaction(), conn.cursor() as cur:
            if readings:
                cur.executemany(
                    "INSERT INTO readings VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(d, s, ts, t, now) for d, s, ts, t in readings])
            if rejects:
                self._add_rejects(cur, rejects, now)

    def _add_rejects(self, cur: psycopg.Cursor, rejects, now: str) -> None:
        """As ReadingsDB._add_rejects, in three statements whatever the batch size."""
        # Only rows actually inserted are counted: a redelivery is not counted twice.
        cur.execute(
            "WITH new AS (INSERT INTO rejects SELECT d, s, raw, why, %s FROM "
            "unnest(%s::text[], %s::bigint[], %s::bytea[], %s::text[]) AS r(d, s, raw, why) "
            "ON CONFLICT DO NOTHING RETURNING device) "
            "INSERT INTO reject_counts SELECT device, COUNT(*), %s FROM new GROUP BY device "
            "ON CONFLICT (device) DO UPDATE SET "
            "rejected = reject_counts.rejected + excluded.rejected, last = excluded.last",
            (now, [r[0] for r in rejects], [r[1] for r in rejects],
             [bytes(r[2][:DEFAULT_SAMPLE_BYTES]) for r in rejects], [r[3] for r in rejects],
             now))
        cur.execute(
            "DELETE FROM rejects r USING (SELECT device, seq, row_number() OVER "
            "(PARTITION BY device ORDER BY seq DESC) AS n FROM rejects WHERE device = ANY(%s)) "
            "old WHERE r.device = old.device AND r.seq = old.seq AND old.n > %s",
            (sorted({r[0] for r in rejects}), self.rejects_per_device))
        excess = cur.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] - self.rejects_total
        if excess > 0:
            # SQLite drops the oldest by (received, rowid); PostgreSQL has no insertion
            # order, so rows received together go by (device, seq).
            cur.execute(
                "DELETE FROM rejects WHERE (device, seq) IN (SELECT device, seq FROM rejects "
                "ORDER BY received, device, seq LIMIT %s)", (excess,))

    def reject_counts(self) -> dict[str, int]:
        """Every payload each device had rejected, including those no longer kept."""
        return self._call(lambda conn: dict(
            conn.execute("SELECT device, rejected FROM reject_counts")))

    def add_device(self, device: str) -> None:
        self._call(lambda conn: conn.execute(
            "INSERT INTO devices VALUES (%s, %s) ON CONFLICT DO NOTHING", (device, now_iso())))

    def devices(self) -> list[str]:
        return self._call(lambda conn: [
            r[0] for r in conn.execute("SELECT device FROM devices ORDER BY device")])

    def readings(self, device: str, since: str | None = None) -> list[tuple]:
        q = "SELECT seq, ts, temp FROM readings WHERE device = %s"
        args: list = [device]
        if since:
            q += " AND ts >= %s"
            args.append(since)
        return self._call(lambda conn: [tuple(r) for r in conn.execute(q + " ORDER BY seq", args)])

    def latest(self, device: str) -> tuple | None:
        """(seq, ts, temp) of the device's newest reading: one index lookup."""
        row = self._call(lambda conn: conn.execute(
            "SELECT seq, ts, temp FROM readings WHERE device = %s "
            "ORDER BY seq DESC LIMIT 1", (device,)).fetchone())
        return tuple(row) if row else None

    def rejects(self, device: str | None = None) -> list[tuple]:
        q = "SELECT device, seq, raw, reason FROM rejects"
        q, args = ((q + " WHERE device = %s ORDER BY seq", (device,)) if device
                   else (q + " ORDER BY device, seq", ()))
        rows = self._call(lambda conn: conn.execute(q, args).fetchall())
        return [(d, s, bytes(raw), why) for d, s, raw, why in rows]

    def count(self, device: str | None = None) -> int:
        q, args = (("SELECT COUNT(*) FROM readings WHERE device = %s", (device,)) if device
                   else ("SELECT COUNT(*) FROM readings", ()))
        return self._call(lambda conn: conn.execute(q, args).fetchone()[0])

    def delete_older_than(self, cutoff: str) -> int:
        """Drop readings taken before `cutoff` (ISO-8601 UTC); how many went."""
        return self._call(lambda conn: conn.execute(
            "DELETE FROM readings WHERE ts < %s", (cutoff,)).rowcount)

    def ping(self) -> None:
        self._call(lambda conn: conn.execute("SELECT 1").fetchone())
