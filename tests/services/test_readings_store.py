"""Both readings stores (SQLite and a real PostgreSQL) against one contract:
idempotence on (device, seq), versioned migrations, retention."""

from __future__ import annotations

import sqlite3

import pytest
from stanfleet.services.migrations import LATEST, MIGRATIONS
from stanfleet.services.readings_store import StoreError, open_store, probe, retention_cutoff

from ..pg import free_port

# The schema as stanfleet 0.1 created it, before versioning (readings_db.py at e2c028e).
UNVERSIONED_SQLITE = """
CREATE TABLE readings (device TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL,
    temp REAL NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq));
CREATE INDEX readings_by_time ON readings (device, ts);
CREATE TABLE rejects (device TEXT NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL,
    reason TEXT NOT NULL, received TEXT NOT NULL, PRIMARY KEY (device, seq));
CREATE TABLE devices (device TEXT PRIMARY KEY, first_seen TEXT NOT NULL);
INSERT INTO readings VALUES ('OLD1', 1, '2026-01-01T00:00:00.000Z', 19.5, '2026-01-01T00:00:01.000Z');
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "fleet.db")
    return request.getfixturevalue("pg_url")


def test_a_redelivered_reading_is_stored_once(store_url):
    db = open_store(store_url)
    try:
        row = ("D1", 7, "2026-11-25T10:00:00.000Z", 20.0)
        db.commit_batch([row], [("D1", 8, b"\xffraw", "not JSON")])
        db.commit_batch([row, ("D1", 9, "2026-11-25T10:00:06.000Z", 21.0)],
                        [("D1", 8, b"\xffraw", "not JSON")])
        assert db.readings("D1") == [(7, "2026-11-25T10:00:00.000Z", 20.0),
                                     (9, "2026-11-25T10:00:06.000Z", 21.0)]
        assert db.rejects("D1") == [("D1", 8, b"\xffraw", "not JSON")]
        assert db.count() == 2
    finally:
        db.close()


def test_an_empty_database_is_migrated_to_the_latest_version(store_url):
    db = open_store(store_url)
    try:
        assert db.schema_version() == LATEST == MIGRATIONS[-1].version
        db.add_device("3F45")
        db.add_device("3F45")
        assert db.devices() == ["3F45"]
    finally:
        db.close()
    again = open_store(store_url)  # reopening applies nothing twice
    assert again.schema_version() == LATEST and again.devices() == ["3F45"]
    again.close()


def test_a_database_from_before_versioning_is_migrated_and_keeps_its_rows(tmp_path, request):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(UNVERSIONED_SQLITE)
    db = open_store(str(path))
    try:
        assert db.schema_version() == LATEST
        assert db.readings("OLD1") == [(1, "2026-01-01T00:00:00.000Z", 19.5)]
        indexes = {r[0] for r in db.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "readings_by_age" in indexes  # step 2 ran on the version-1 file
    finally:
        db.close()


def test_a_postgres_database_at_version_1_is_migrated(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for sql in MIGRATIONS[0].postgres:
            conn.execute(sql)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO readings VALUES ('OLD1', 1, '2026-01-01T00:00:00.000Z', 19.5, "
                     "'2026-01-01T00:00:01.000Z')")
    db = open_store(pg_url)
    try:
        assert db.schema_version() == LATEST
        assert db.readings("OLD1") == [(1, "2026-01-01T00:00:00.000Z", 19.5)]
        assert db.conn.execute("SELECT to_regclass('readings_by_age') IS NOT NULL").fetchone()[0]
    finally:
        db.close()


def test_a_schema_newer_than_this_stanfleet_is_refused(store_url):
    open_store(store_url).close()
    db = open_store(store_url)
    db.conn.execute("UPDATE schema_version SET version = %d" % (LATEST + 1))
    db.close()
    with pytest.raises(StoreError, match="newer than this stanfleet"):
        open_store(store_url)


def test_retention_drops_only_older_readings(store_url):
    import datetime as dt

    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.timezone.utc)
    db = open_store(store_url)
    try:
        db.commit_batch([("D1", 1, "2026-10-01T00:00:00.000Z", 1.0),
                         ("D1", 2, "2026-11-20T00:00:00.000Z", 2.0),
                         ("D2", 1, "2026-11-25T11:00:00.000Z", 3.0)], [])
        assert db.delete_older_than(retention_cutoff(30, now)) == 1
        assert db.delete_older_than(retention_cutoff(30, now)) == 0
        assert [s for s, _, _ in db.readings("D1")] == [2]
        assert db.delete_older_than(retention_cutoff(0.5, now)) == 1
        assert db.count() == 1
    finally:
        db.close()


def test_probe_reaches_without_migrating(store_url):
    assert "created" in probe(store_url) or "empty" in probe(store_url)
    open_store(store_url).close()
    text = probe(store_url)
    assert text.startswith(("SQLite file", "PostgreSQL"))
    if "PostgreSQL" in text:
        assert f"schema version {LATEST} of {LATEST}" in text


def test_an_unreachable_postgres_is_one_line_without_the_password():
    url = f"postgresql://fleet:s3cret@127.0.0.1:{free_port()}/nope"
    with pytest.raises(StoreError) as e:
        open_store(url)
    text = str(e.value)
    assert "\n" not in text and "s3cret" not in text and "fleet:***@127.0.0.1" in text


def test_listeners_starting_together_migrate_once(pg_url):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(pg_url), range(4)))
    try:
        assert {s.schema_version() for s in stores} == {LATEST}
        rows = stores[0].conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0]
        assert rows == 1
    finally:
        for s in stores:
            s.close()


def test_the_config_manager_shares_the_database(store_url):
    from stanfleet.services.configmgr import ConfigStore

    db = open_store(store_url)
    db.add_device("3F45")  # as the listener records a device it follows
    db.close()
    store = ConfigStore(store_url)
    try:
        store.record("9999", {"sending_frequency": 30, "mode": "eco"})
        store.record("9999", {"sending_frequency": 60})
        assert store.desired("9999") == {"sending_frequency": 60, "mode": "eco"}
        assert store.known_devices() == ["3F45", "9999"]
    finally:
        store.close()


def test_latest_is_the_newest_reading_of_one_device(store_url):
    db = open_store(store_url)
    try:
        assert db.latest("D1") is None
        db.commit_batch([("D1", 2, "2026-11-25T10:00:03.000Z", 20.5),
                         ("D1", 1, "2026-11-25T10:00:00.000Z", 20.0),
                         ("D2", 9, "2026-11-25T10:00:00.000Z", 30.0)], [])
        assert db.latest("D1") == (2, "2026-11-25T10:00:03.000Z", 20.5)
        assert db.reject_counts() == {}
    finally:
        db.close()
