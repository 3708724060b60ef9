"""A task of a service that fails for an unexpected reason (a bug: here a
parser that raises what it never should) takes the process down, loudly,
with a non-zero exit and the traceback; a restarted listener resumes and
loses nothing, since the message was never acked."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from stanfleet.services import listener as listener_mod
from stanfleet.services.listener import ListenerFailed
from stanfleet.up import FleetFailed

from ..services.test_listener import device, reading, rows, start_listener, stop_listener
from ..waiting import eventually

REPO = Path(__file__).resolve().parents[2]
BUG = b'{"ts": "2026-11-25T10:00:00Z", "temp": 66.6}'


def buggy_parse(real):
    def parse(payload: bytes):
        if payload == BUG:
            raise RuntimeError("injected bug")
        return real(payload)
    return parse


async def test_a_dead_writer_stops_the_listener_and_a_restart_resumes(stan_server, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(listener_mod, "ACK_WAIT", 1)  # the unacked message comes back soon
    real = listener_mod.parse
    monkeypatch.setattr(listener_mod, "parse", buggy_parse(real))
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    sc, nc = await device(stan_server, "B0B0")
    await sc.publish("devices.B0B0.events", reading(20))
    await sc.publish("devices.B0B0.events", BUG)
    with pytest.raises(ListenerFailed) as failed:
        await asyncio.wait_for(task, 60)
    assert isinstance(failed.value.__cause__, RuntimeError)
    monkeypatch.setattr(listener_mod, "parse", real)  # the bug is fixed; restart
    lst, task = await start_listener(stan_server, db)

    async def both_saved():
        return [s for s, _, _ in rows(db, "B0B0")[0]] == [1, 2]
    await eventually(both_saved, timeout=60)
    await stop_listener(lst, task)
    await sc.close()
    await nc.close()


async def test_the_listener_command_exits_non_zero_with_a_traceback(stan_server, tmp_path):
    code = ("import sys\n"
            "import stanfleet.services.listener as L\n"
            "from tests.hardening.test_task_failure import buggy_parse\n"
            "L.parse = buggy_parse(L.parse)\n"
            "from stanfleet.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "listener", "--nats", stan_server.nats_url,
        "--cluster-id", stan_server.cluster_id, "--db", str(tmp_path / "r.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    sc, nc = await device(stan_server, "B0B0")
    await sc.publish("devices.B0B0.events", BUG)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode != 0
    text = err.decode()
    assert "Traceback" in text and "RuntimeError: injected bug" in text
    assert "ListenerFailed" in text
    await sc.close()
    await nc.close()


async def test_a_dead_listener_stops_up(fleet, monkeypatch):
    monkeypatch.setattr(listener_mod, "parse", buggy_parse(listener_mod.parse))
    fleet.check()  # all running
    sc, nc = await device(type("S", (), {"nats_url": fleet.server.nats_url,
                                         "cluster_id": fleet.args.cluster_id}), "B0B0")
    await sc.publish("devices.B0B0.events", BUG)
    await asyncio.wait_for(asyncio.wait([fleet._tasks[0]]), 60)
    with pytest.raises(FleetFailed) as failed:
        fleet.check()  # what up's main loop calls every second
    assert isinstance(failed.value.__cause__, ListenerFailed)
    await sc.close()
    await nc.close()
