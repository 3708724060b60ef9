"""The cases of issue 12 about hostile device data and files, one test each.

Each was reproduced against the code before the fix (these tests use only
interfaces that existed then, so they run against it and fail there):
1. one reading stopped the listener for every device, for good;
3. one status message took down `stanfleet up`, `config show` and `release status`;
4. payloads of 1 MB went whole into the rejects table;
6. fleet.db, its WAL, device logs and the security folder were open to all.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from stanfleet.services.readings_db import ReadingsDB
from stanfleet.up import render

from ..services.test_config import cli as config_cli
from ..services.test_config import known, session
from ..services.test_listener import device, reading, rows, start_listener, stop_listener
from ..services.test_release import artifact
from ..services.test_release import cli as release_cli
from ..waiting import eventually

POISON = [
    b'{"ts": "0001-01-01T00:00:00+01:00", "temp": 20.5}',
    b'{"ts": "9999-12-31T23:00:00-05:00", "temp": 20.5}',
    b'{"ts": "2026-11-25T10:00:00Z", "temp": ' + b"9" * 401 + b"}",
]


@pytest.mark.parametrize("poison", POISON, ids=["year-1", "year-9999", "401-digits"])
async def test_case1_one_reading_stops_no_other_device(stan_server, tmp_path, poison):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    evil, evil_nc = await device(stan_server, "EV1L")
    good, good_nc = await device(stan_server, "600D")
    await evil.publish("devices.EV1L.events", poison)  # PubAck'ed: stored, delivered
    for i in range(5):
        await good.publish("devices.600D.events", reading(20 + i))

    async def all_in():
        return len(rows(db, "600D")[0]) == 5 and len(rows(db, "EV1L")[1]) == 1
    await eventually(all_in, timeout=60)
    assert not task.done()
    saved, rejects = rows(db, "EV1L")
    assert saved == [] and rejects[0][2] == poison[:256] and "out" in rejects[0][3]
    await stop_listener(lst, task)
    # Acked: it does not come back after a restart, and the next readings go on.
    lst, task = await start_listener(stan_server, db)
    await evil.publish("devices.EV1L.events", reading(21))

    async def next_one():
        return lst.saved == 1
    await eventually(next_one, timeout=60)
    assert lst.rejected == 0
    await stop_listener(lst, task)
    for c in (evil, good, evil_nc, good_nc):
        await c.close()


async def test_case3_a_status_message_does_not_take_down_up(fleet):
    sc, nc = await session(SimpleNamespace(nats_url=fleet.server.nats_url,
                                           cluster_id=fleet.args.cluster_id), "devices")
    await sc.publish("devices.EV1L.status", b'{"version": {"a": 1}}')
    await sc.publish("devices.600D.status", b'{"version": "1.2.0"}')
    await sc.publish("devices.600D.events", reading(21.5))
    await sc.publish("devices.600D.events", reading(22.5))

    async def both_seen():
        return {"EV1L", "600D"} <= set(fleet.status) and fleet.listener.saved == 2
    await eventually(both_seen, timeout=60)
    out = io.StringIO()
    render(fleet.rows(), out)  # the live table, redrawn every second
    table = {line.split()[0]: line.split() for line in out.getvalue().splitlines()[3:]}
    assert table["600D"][1] == "22.50" and table["600D"][-2:] == ["1.2.0", "offline"]
    assert table["EV1L"][-2] != "{'a':"  # shown as invalid, not as the device's object
    assert all(not t.done() for t in fleet._tasks)
    await sc.close()
    await nc.close()


BAD_STATUS = {"AAAA": b'{"config": [1]}', "BBBB": b'{"ota": "x"}',
              "CCCC": b'{"version": {"a": 1}}',
              "DDDD": json.dumps({"version": "1.2.0", "config": {"sending_frequency": 3},
                                  "ota": {"state": "installed", "version": "1.2.0"}}).encode()}


async def publish_statuses(stan):
    sc, nc = await session(stan, "devices")
    for dev, payload in BAD_STATUS.items():
        await sc.publish(f"devices.{dev}.status", payload)
    await sc.close()
    await nc.close()


async def test_case3_config_show_survives_hostile_statuses(stan_server, tmp_path):
    db = tmp_path / "fleet.db"
    known(db, *BAD_STATUS)
    await publish_statuses(stan_server)
    rc, out, err = await config_cli(stan_server, db, "show")
    assert rc == 0 and "Traceback" not in err, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["DDDD"].split()[1:] == ["sending_frequency", "-", "3", "ok"]
    for dev in ("AAAA", "BBBB", "CCCC"):
        assert "INVALID STATUS" in lines[dev], lines[dev]


async def test_case3_release_status_survives_hostile_statuses(stan_server, tmp_path):
    artifact(tmp_path)
    known(tmp_path / "fleet.db", *BAD_STATUS)
    await publish_statuses(stan_server)
    rc, out, err = await release_cli(stan_server, tmp_path, "status", "1.2.0")
    assert rc == 0 and "Traceback" not in err, err
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["DDDD"].split()[1:3] == ["1.2.0", "installed"]
    for dev in ("AAAA", "BBBB", "CCCC"):
        assert "invalid status" in lines[dev], lines[dev]
    assert "1/4 installed" in out.splitlines()[0]


@pytest.mark.timeout(300)
async def test_case4_large_rejected_payloads_do_not_grow_the_database(stan_server, tmp_path):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    evil, evil_nc = await device(stan_server, "B1G0")
    n, size = 30, 1_000_000
    for i in range(n):
        await evil.publish("devices.B1G0.events", bytes([65 + i % 26]) * size)

    async def all_rejected():
        return lst.rejected == n
    await eventually(all_rejected, timeout=120)
    await stop_listener(lst, task)
    on_disk = sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if os.path.exists(p))
    assert on_disk < 1_000_000, f"{on_disk} bytes for {n} rejects of {size} bytes"
    r = ReadingsDB(str(db))
    rejects = r.rejects("B1G0")
    r.close()
    assert len(rejects) == n and all(len(raw) <= 256 for _, _, raw, _ in rejects)
    await evil.close()
    await evil_nc.close()


def private(path: Path) -> bool:
    return not stat.S_IMODE(os.lstat(path).st_mode) & 0o077


@pytest.mark.timeout(300)
async def test_case6_up_leaves_nothing_readable_by_others(tmp_path):
    data = tmp_path / "data"
    exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
    proc = await asyncio.create_subprocess_exec(
        exe, "up", "--devices", "1", "--data-dir", str(data), "--port", "0",
        "--artifact-port", "0", "--plain",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = []
    try:
        log = data / "devices" / "D0000001" / "log"
        while True:  # the device's first reading is in fleet.db once it is online
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, "up exited:\n" + "".join(out)
            out.append(line.decode())
            if "device=D0000001 following" in out[-1]:
                break

        async def connected():
            return log.exists() and "stanfleet: connected" in log.read_text()
        await eventually(connected, timeout=120)
        for p in (data / "fleet.db", data / "fleet.db-wal", data / "security", log):
            assert p.exists() and private(p), f"{p} is {oct(os.lstat(p).st_mode)}"
        opened = [str(p) for p in data.rglob("*") if not p.is_symlink() and not private(p)]
        assert not opened, f"readable by others: {opened[:10]}"
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stdout.read(), 60)).decode()
        assert await proc.wait() == 0, "".join(out) + rest
