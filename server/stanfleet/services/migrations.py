"""Versioned schema of the readings database, for SQLite and PostgreSQL alike.

`schema_version` holds the version a database is at; `MIGRATIONS` are the
ordered steps, each with the SQL of both dialects, applied in one transaction
per step. Never edit a released step: add the next one. A database made
before versioning (stanfleet up to 0.1, no schema_version table, but a
readings table) is at version 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "readings, rejects and devices, keyed by (device, channel sequence)", sqlite=(
        """CREATE TABLE IF NOT EXISTS readings (
            device TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL,
            temp REAL NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq))""",
        "CREATE INDEX IF NOT EXISTS readings_by_time ON readings (device, ts)",
        """CREATE TABLE IF NOT EXISTS rejects (
            device TEXT NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL,
            reason TEXT NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq))""",
        """CREATE TABLE IF NOT EXISTS devices (
            device TEXT PRIMARY KEY, first_seen TEXT NOT NULL)""",
    ), postgres=(
        # ts and received stay ISO-8601 UTC text (…T10:00:00.000Z), as in SQLite:
        # one format in both, and it sorts and compares as time.
        """CREATE TABLE IF NOT EXISTS readings (
            device TEXT NOT NULL, seq BIGINT NOT NULL, ts TEXT NOT NULL,
            temp DOUBLE PRECISION NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq))""",
        "CREATE INDEX IF NOT EXISTS readings_by_time ON readings (device, ts)",
        """CREATE TABLE IF NOT EXISTS rejects (
            device TEXT NOT NULL, seq BIGINT NOT NULL, raw BYTEA NOT NULL,
            reason TEXT NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq))""",
        """CREATE TABLE IF NOT EXISTS devices (
            device TEXT PRIMARY KEY, first_seen TEXT NOT NULL)""",
    )),
    Migration(2, "index on reading time, for retention", sqlite=(
        "CREATE INDEX IF NOT EXISTS readings_by_age ON readings (ts)",
    ), postgres=(
        "CREATE INDEX IF NOT EXISTS readings_by_age ON readings (ts)",
    )),
    # The configuration manager's table, which it used to create on its own
    # (configmgr.py before versioning): in the same database on both engines.
    Migration(3, "desired config per device and key", sqlite=(
        """CREATE TABLE IF NOT EXISTS desired_config (
            device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
            updated TEXT NOT NULL, PRIMARY KEY (device, key))""",
    ), postgres=(
        """CREATE TABLE IF NOT EXISTS desired_config (
            device TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
            updated TEXT NOT NULL, PRIMARY KEY (device, key))""",
    )),
    # Rejected payloads are bounded (a sample, the newest per device and in all:
    # readings_db.py); this counts every one, including those no longer kept.
    Migration(4, "count of rejected payloads per device", sqlite=(
        """CREATE TABLE IF NOT EXISTS reject_counts (
            device TEXT PRIMARY KEY, rejected INTEGER NOT NULL, last TEXT NOT NULL)""",
    ), postgres=(
        """CREATE TABLE IF NOT EXISTS reject_counts (
            device TEXT PRIMARY KEY, rejected BIGINT NOT NULL, last TEXT NOT NULL)""",
    )),
)
LATEST = MIGRATIONS[-1].version

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


def pending(current: int) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version > current]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer stanfleet: refuse rather than guess."""

    def __init__(self, found: int):
        super().__init__(f"database schema version {found} is newer than this stanfleet's "
                         f"{LATEST}: upgrade stanfleet")
