"""The listener against the real streaming server and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import nats
import pytest
from stanfleet.client import Client
from stanfleet.services.listener import Listener, ListenerConfig
from stanfleet.services.readings_db import ReadingsDB

from ..waiting import eventually


async def device(stan, device_id: str):
    nc = await nats.connect(stan.nats_url)
    sc = Client()
    await sc.connect(stan.cluster_id, f"device-{device_id}", nats=nc)
    return sc, nc


def reading(temp, ts="2026-11-25T10:00:00Z") -> bytes:
    return json.dumps({"ts": ts, "temp": temp}).encode()


async def start_listener(stan, db_path, name="1") -> tuple[Listener, asyncio.Task]:
    lst = Listener(ListenerConfig(nats_url=stan.nats_url, cluster_id=stan.cluster_id,
                                  name=name, db_path=str(db_path)))
    task = asyncio.create_task(lst.run())
    await asyncio.wait_for(lst.ready.wait(), 15)
    return lst, task


async def stop_listener(lst, task):
    await lst.stop()
    await asyncio.wait_for(task, 15)


def rows(db_path, device_id):
    db = ReadingsDB(str(db_path))
    try:
        return db.readings(device_id), db.rejects(device_id)
    finally:
        db.close()


async def test_readings_from_a_new_device_are_saved_without_restart(stan_server, tmp_path):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    sc, nc = await device(stan_server, "3F45")
    for i in range(5):
        await sc.publish("devices.3F45.events", reading(20 + i))

    async def all_saved():
        return lst.saved == 5
    await eventually(all_saved)
    saved, rejects = rows(db, "3F45")
    assert [(seq, temp) for seq, _, temp in saved] == [(i + 1, 20.0 + i) for i in range(5)]
    assert rejects == []
    await stop_listener(lst, task)
    await sc.close()
    await nc.close()


@pytest.mark.parametrize("payload, reason", [
    (b"not json", "not JSON"),
    (b'{"temp": 20}', "missing field"),
    (b'{"ts": "2026-11-25T10:00:00Z", "temp": "warm"}', "not a number"),
    (b'{"ts": "2026-11-25T10:00:00Z", "temp": 4000}', "outside"),
    (b'{"ts": "yesterday", "temp": 20}', "ISO-8601"),
    (b'[1, 2]', "not a JSON object"),
])
async def test_invalid_payloads_go_to_rejects_and_are_acked(stan_server, tmp_path, payload,
                                                           reason):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    sc, nc = await device(stan_server, "BAD1")
    await sc.publish("devices.BAD1.events", payload)
    await sc.publish("devices.BAD1.events", reading("20.4"))  # the seed's string form is fine

    async def handled():
        return lst.saved + lst.rejected == 2
    await eventually(handled)
    saved, rejects = rows(db, "BAD1")
    assert [(s, t) for s, _, t in saved] == [(2, 20.4)]
    assert len(rejects) == 1 and rejects[0][2] == payload and reason in rejects[0][3]
    await stop_listener(lst, task)
    # Acked: a restarted listener gets nothing again.
    lst2, task2 = await start_listener(stan_server, db)
    await sc.publish("devices.BAD1.events", reading(21))

    async def third():
        return lst2.saved == 1
    await eventually(third)
    assert lst2.rejected == 0
    await stop_listener(lst2, task2)
    await sc.close()
    await nc.close()


async def test_redelivered_reading_never_makes_a_second_row(tmp_path):
    db = ReadingsDB(str(tmp_path / "r.db"))
    db.commit_batch([("D1", 7, "2026-11-25T10:00:00.000Z", 20.0)], [])
    db.commit_batch([("D1", 7, "2026-11-25T10:00:00.000Z", 20.0)], [])
    assert db.count("D1") == 1
    db.close()


async def test_restarted_listener_continues_without_loss(stan_server, tmp_path):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    sc, nc = await device(stan_server, "AB12")
    await sc.publish("devices.AB12.events", reading(1))

    async def one():
        return lst.saved == 1
    await eventually(one)
    await stop_listener(lst, task)
    for i in range(2, 6):  # published while no listener runs
        await sc.publish("devices.AB12.events", reading(i))
    lst, task = await start_listener(stan_server, db)

    async def rest():
        return lst.saved == 4
    await eventually(rest)
    saved, _ = rows(db, "AB12")
    assert [s for s, _, _ in saved] == [1, 2, 3, 4, 5]
    await stop_listener(lst, task)
    await sc.close()
    await nc.close()


async def test_two_instances_share_work_and_killing_one_loses_nothing(stan_server, tmp_path):
    db = tmp_path / "shared.db"
    a, ta = await start_listener(stan_server, db, name="a")
    b, tb = await start_listener(stan_server, db, name="b")
    sc, nc = await device(stan_server, "C0FE")
    total = 400

    async def publish_all():
        for i in range(total):
            await sc.publish("devices.C0FE.events", reading(i % 50))

    pub = asyncio.create_task(publish_all())

    async def a_working():
        return a.saved > 0
    await eventually(a_working)
    ta.cancel()  # instance a dies abruptly: no close, its unacked go to b
    await a._teardown()
    await pub

    async def all_saved():
        return len(rows(db, "C0FE")[0]) == total
    await eventually(all_saved, timeout=60)
    saved, _ = rows(db, "C0FE")
    assert [s for s, _, _ in saved] == list(range(1, total + 1))
    await stop_listener(b, tb)
    await sc.close()
    await nc.close()


def test_readings_command_formats_and_errors(tmp_path):
    path = tmp_path / "r.db"
    db = ReadingsDB(str(path))
    db.add_device("3F45")
    db.commit_batch([("3F45", 1, "2020-01-01T10:00:00.000Z", 21.5),
                     ("3F45", 2, "2020-01-01T10:00:03.000Z", 21.75)], [])
    db.close()
    exe = [sys.executable, "-m", "stanfleet.cli", "readings"]

    def run(*args):
        return subprocess.run(exe + list(args) + ["--db", str(path)], capture_output=True,
                              text=True, timeout=60)
    out = run("3F45", "--format", "json")
    assert out.returncode == 0
    assert json.loads(out.stdout) == [
        {"seq": 1, "ts": "2020-01-01T10:00:00.000Z", "temp": 21.5},
        {"seq": 2, "ts": "2020-01-01T10:00:03.000Z", "temp": 21.75}]
    out = run("3F45", "--format", "csv")
    assert out.stdout.splitlines()[0] == "seq,ts,temp" and len(out.stdout.splitlines()) == 3
    assert "21.75" in run("3F45").stdout
    assert run("3F45", "--since", "10m").stdout.count("\n") == 1  # header only: all older
    bad = run("NOPE")
    assert bad.returncode == 1 and bad.stderr.strip() == \
        f"stanfleet: unknown device 'NOPE' (no readings in {path})"
    bad = run("3F45", "--since", "soon")
    assert bad.returncode == 1 and "invalid duration" in bad.stderr and "Traceback" not in bad.stderr
