"""`stanfleet config set|show` against the real streaming server."""

from __future__ import annotations

import asyncio
import json
import sys

import nats
import pytest
from stanfleet.client import Client
from stanfleet.services.configmgr import ConfigStore


async def cli(stan, db, *args) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stanfleet.cli", "config", *args, "--nats", stan.nats_url,
        "--cluster-id", stan.cluster_id, "--db", str(db),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def session(stan, client_id):
    nc = await nats.connect(stan.nats_url)
    sc = Client()
    await sc.connect(stan.cluster_id, client_id, nats=nc)
    return sc, nc


def known(db, *devices):
    store = ConfigStore(str(db))
    with store.conn:
        store.conn.executemany("INSERT OR IGNORE INTO devices VALUES (?, '2026-11-25T00:00:00Z')",
                               [(d,) for d in devices])
    store.close()


@pytest.mark.parametrize("args, message", [
    (["set", "3F45", "sending_frequency=0"], "sending_frequency must be between 1 and 86400"),
    (["set", "3F45", "sending_frequency=fast"], "sending_frequency must be an integer"),
    (["set", "3F45", "sending_frequency=true"], "sending_frequency must be an integer"),
    (["set", "3F45", "colour=red"], "unknown key 'colour'"),
    (["set", "3F45", "sending_frequency"], "expected key=value"),
    (["set", "3F45"], "nothing to set"),
    (["set", "NOPE", "sending_frequency=5"], "unknown device 'NOPE'"),
    (["set", "sending_frequency=5"], "give a device ID or --all"),
    (["show", "NOPE"], "unknown device 'NOPE'"),
])
async def test_bad_input_is_one_line_error_and_nothing_is_published(stan_server, tmp_path, args,
                                                                     message):
    db = tmp_path / "fleet.db"
    known(db, "3F45")
    rc, out, err = await cli(stan_server, db, *args)
    assert rc == 1
    assert err.startswith("stanfleet: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "devices.3F45.cfg" not in stan_server.server.channels.channels


async def test_set_publishes_validated_config_and_records_it(stan_server, tmp_path):
    db = tmp_path / "fleet.db"
    known(db, "3F45", "9999")
    rc, out, err = await cli(stan_server, db, "set", "3F45", "sending_frequency=60")
    assert rc == 0, err
    assert out.strip() == "3F45: sending_frequency=60 sent"
    rc, out, err = await cli(stan_server, db, "set", "--all", "sending_frequency=30")
    assert rc == 0, err
    sc, nc = await session(stan_server, "device-3F45")
    got = asyncio.Queue()

    async def cb(msg):
        await got.put(json.loads(msg.data))
    await sc.subscribe("devices.3F45.cfg", cb=cb, durable_name="cfg", deliver_all_available=True)
    first, second = await asyncio.wait_for(got.get(), 10), await asyncio.wait_for(got.get(), 10)
    assert first["sending_frequency"] == 60 and second["sending_frequency"] == 30
    assert first["ts"].endswith("Z")
    assert ConfigStore(str(db)).desired("9999") == {"sending_frequency": 30}
    await sc.close()
    await nc.close()


async def test_set_for_a_new_device_reaches_it_at_first_connect(stan_server, tmp_path):
    db = tmp_path / "fleet.db"
    rc, _, err = await cli(stan_server, db, "set", "AB12", "sending_frequency=5", "--new")
    assert rc == 0, err
    sc, nc = await session(stan_server, "device-AB12")
    got = asyncio.get_running_loop().create_future()
    await sc.subscribe("devices.AB12.cfg", cb=lambda m: got.set_result(m.data),
                       durable_name="cfg", deliver_all_available=True)
    assert json.loads(await asyncio.wait_for(got, 10))["sending_frequency"] == 5
    await sc.close()
    await nc.close()


async def test_show_flags_devices_that_have_not_applied_the_desired_config(stan_server,
                                                                          tmp_path):
    db = tmp_path / "fleet.db"
    known(db, "AAAA", "BBBB", "CCCC")
    assert (await cli(stan_server, db, "set", "--all", "sending_frequency=60"))[0] == 0
    sc, nc = await session(stan_server, "devices")
    await sc.publish("devices.AAAA.status", json.dumps(
        {"ts": "2026-11-25T10:00:00Z", "version": "1.0.0",
         "config": {"sending_frequency": 60}}).encode())
    await sc.publish("devices.BBBB.status", json.dumps(
        {"ts": "2026-11-25T10:00:00Z", "version": "1.0.0",
         "config": {"sending_frequency": 3}}).encode())
    rc, out, err = await cli(stan_server, db, "show")
    assert rc == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["AAAA"].split()[2:] == ["60", "60", "ok"]
    assert lines["BBBB"].split()[2:] == ["60", "3", "NOT", "APPLIED"]
    assert "never reported" in lines["CCCC"]
    await sc.close()
    await nc.close()


async def test_unreachable_server_is_a_clear_error(tmp_path):
    class Nowhere:
        nats_url = "nats://127.0.0.1:1"
        cluster_id = "test-cluster"
    db = tmp_path / "fleet.db"
    known(db, "3F45")
    rc, out, err = await cli(Nowhere, db, "set", "3F45", "sending_frequency=60")
    assert rc == 1 and err.strip().startswith("stanfleet: cannot reach NATS")
    assert "Traceback" not in err
