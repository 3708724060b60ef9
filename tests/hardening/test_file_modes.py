"""Files holding fleet data are their owner's alone when created, and files
an older version left open to all are tightened when opened again."""

from __future__ import annotations

import os
import stat

from stanfleet.fleet.device import Device
from stanfleet.security.certs import init
from stanfleet.services.configmgr import ConfigStore
from stanfleet.services.readings_db import ReadingsDB
from stanfleet.up import Security


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_databases_and_their_wal_are_created_private_under_any_umask(tmp_path):
    old = os.umask(0)  # the most open umask: the modes come from the code, not from it
    try:
        db = ReadingsDB(str(tmp_path / "new" / "fleet.db"))
        db.commit_batch([("D1", 1, "2026-11-25T10:00:00.000Z", 20.0)], [])
        store = ConfigStore(str(tmp_path / "new" / "fleet.db"))
        store.record("D1", {"sending_frequency": 5})
        for name in ("fleet.db", "fleet.db-wal", "fleet.db-shm"):
            assert mode(tmp_path / "new" / name) == 0o600, name
        assert mode(tmp_path / "new") == 0o700
        store.close()
        db.close()
    finally:
        os.umask(old)


def test_an_open_database_and_wal_are_tightened(tmp_path):
    path = tmp_path / "fleet.db"
    db = ReadingsDB(str(path))
    db.add_device("D1")
    for p in (path, tmp_path / "fleet.db-wal", tmp_path / "fleet.db-shm"):
        os.chmod(p, 0o644)
    db2 = ReadingsDB(str(path))  # a second process opens it: the files are tightened
    for p in (path, tmp_path / "fleet.db-wal", tmp_path / "fleet.db-shm"):
        assert mode(p) == 0o600, p
    db2.close()
    db.close()


def test_a_device_log_is_private_also_when_it_was_not(tmp_path):
    dev = Device("D1", tmp_path, proxy=None)
    dev.open_log()
    dev._log.close()
    assert mode(dev.log_path) == 0o600
    os.chmod(dev.log_path, 0o644)
    dev.open_log()
    dev._log.close()
    assert mode(dev.log_path) == 0o600


def test_the_security_dir_is_private_whoever_creates_it(tmp_path):
    init(str(tmp_path / "a" / "security" / "certs"), ["localhost"])  # `certs init` first
    assert mode(tmp_path / "a" / "security") == 0o700
    assert mode(tmp_path / "a" / "security" / "certs") == 0o700
    opened = tmp_path / "b" / "security"
    opened.mkdir(parents=True, mode=0o755)
    os.chmod(opened, 0o755)
    Security(str(opened), "test-cluster")  # up opens it
    assert mode(opened) == 0o700


async def test_up_makes_what_an_older_version_left_open_private(tmp_path):
    from stanfleet.up import Fleet

    from .conftest import up_args

    data = tmp_path / "data"
    (data / "broker").mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "broker", 0o755)
    (data / "broker" / "nats.log").write_text("old log\n")
    os.chmod(data / "broker" / "nats.log", 0o644)
    os.symlink("/etc/hostname", data / "link")  # a link is not followed
    before = mode("/etc/hostname")
    fleet = Fleet(up_args(tmp_path))
    try:
        await fleet.start()
    finally:
        await fleet.stop()
    for p in (data, data / "broker", data / "broker" / "nats.log"):
        assert not mode(p) & 0o077, p
    assert mode("/etc/hostname") == before
