"""What a readings store is, and which one a database URL opens.

The listener, `stanfleet readings` and the dashboard use this interface only;
SQLite (readings_db.py, the default) and PostgreSQL (readings_pg.py, for a
site with several listener machines) implement it. Every call blocks: async
callers run them on one thread of their own.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Protocol

from ..errors import CommandError
from .migrations import SchemaTooNew


class ReadingsStore(Protocol):
    def commit_batch(self, readings: list[tuple], rejects: list[tuple]) -> None:
        """readings (device, seq, ts, temp), rejects (device, seq, raw, reason): one
        transaction; a (device, seq) already stored is left as it is (and a
        rejection is counted once)."""

    def add_device(self, device: str) -> None: ...
    def devices(self) -> list[str]: ...
    def readings(self, device: str, since: str | None = None) -> list[tuple]:
        """(seq, ts, temp) by sequence; `since` is ISO-8601 UTC."""

    def latest(self, device: str) -> tuple | None:
        """(seq, ts, temp) of the device's newest reading, or None: one index lookup."""

    def rejects(self, device: str | None = None) -> list[tuple]:
        """(device, seq, sample, reason) of the rejected payloads still kept: the
        newest per device and in all (readings_db.DEFAULT_REJECTS_*)."""

    def reject_counts(self) -> dict[str, int]:
        """Every payload each device had rejected, including those no longer kept."""

    def count(self, device: str | None = None) -> int: ...
    def delete_older_than(self, cutoff: str) -> int: ...
    def schema_version(self) -> int: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class StoreError(CommandError):
    """The database cannot be opened or used; one line that names it (no password)."""


def open_store(url: str) -> ReadingsStore:
    """postgresql://... opens PostgreSQL; a path or sqlite:///PATH opens SQLite.
    The schema is migrated to the latest version on open."""
    if is_postgres(url):
        import psycopg  # only where PostgreSQL is used

        from .readings_pg import DatabaseError, PostgresReadings

        try:
            return PostgresReadings(url)
        except DatabaseError as e:
            raise StoreError(str(e)) from None
        except (psycopg.Error, SchemaTooNew) as e:
            raise StoreError(f"{describe(url)}: {_first_line(e)}") from None
    from .readings_db import ReadingsDB

    try:
        return ReadingsDB(url)
    except (sqlite3.Error, OSError, SchemaTooNew) as e:
        raise StoreError(f"{url}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def describe(url: str) -> str:
    """The URL as it may be shown: a PostgreSQL password is hidden."""
    if is_postgres(url):
        from .readings_pg import redact

        return redact(url)
    return url


def retention_cutoff(days: float, now: dt.datetime | None = None) -> str:
    """ISO-8601 UTC of `days` ago, in the stores' ts format."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return (now - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def probe(url: str) -> str:
    """Reach the database without changing it (no migration): what is there,
    e.g. "PostgreSQL 15.10, schema version 2 of 2". StoreError if it cannot."""
    from .migrations import LATEST

    if is_postgres(url):
        import psycopg

        from .readings_pg import DatabaseError, connect

        try:
            with connect(url) as conn:
                server = conn.execute("SHOW server_version").fetchone()[0].split()[0]
                has = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
                version = (conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
                           if has else None)
        except DatabaseError as e:
            raise StoreError(str(e)) from None
        except psycopg.Error as e:
            raise StoreError(f"{describe(url)}: {_first_line(e)}") from None
        state = f"schema version {version or 0} of {LATEST}" if has else "empty (created at start)"
        return f"PostgreSQL {server}, {state}"
    import os

    from .readings_db import sqlite_path

    path = sqlite_path(url)
    if os.path.exists(path):
        return f"SQLite file {path}"
    folder = os.path.dirname(os.path.abspath(path))
    parent = folder
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise StoreError(f"{path}: cannot be created ({parent} is not writable)")
    return f"SQLite file {path} (created at start)"
