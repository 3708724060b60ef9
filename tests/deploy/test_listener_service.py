"""`stanfleet listener --config` as a supervised service: a real process on
a real streaming server and PostgreSQL, with its endpoints, JSON logs,
SIGHUP and SIGTERM, and a one-line failure when a dependency is missing."""

from __future__ import annotations

import json
import signal

import aiohttp
from stanfleet.services.readings_store import open_store

from ..pg import free_port
from ..services.test_listener import device, reading
from ..waiting import eventually
from .serviceproc import ServiceProcess, run_once


def write_config(path, stan, db_url: str, ops_port: int, level="info", retention=0) -> str:
    path.write_text(f"""
[nats]
urls = ["{stan.nats_url}"]
cluster_id = "{stan.cluster_id}"
[database]
url = "{db_url}"
retention_days = {retention}
[listener]
name = "svc"
ops_port = {ops_port}
[log]
format = "json"
level = "{level}"
""")
    return str(path)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


async def test_listener_service_endpoints_logs_reload_and_clean_stop(stan_server, pg_url,
                                                                      tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "site.toml", stan_server, pg_url, port)
    svc = await ServiceProcess("listener", "--config", cfg).start()
    try:
        await svc.wait_for("serving")
        base = f"http://127.0.0.1:{port}"
        assert await get(base + "/healthz") == (200, "ok\n")
        assert await get(base + "/readyz") == (200, "ready\n")
        sc, nc = await device(stan_server, "SV01")
        for i in range(10):
            await sc.publish("devices.SV01.events", reading(20 + i))

        async def saved():
            _, text = await get(base + "/metrics")
            return "stanfleet_listener_readings_saved_total 10.0" in text
        await eventually(saved)
        db = open_store(pg_url)
        assert [s for s, _, _ in db.readings("SV01")] == list(range(1, 11))
        db.close()
        rc, out, err = await run_once("readings", "SV01", "--config", cfg, "--format", "json")
        assert rc == 0 and [r["temp"] for r in json.loads(out)] == [20.0 + i for i in range(10)]
        logs = svc.json_lines()
        assert logs and all({"ts", "level", "logger", "msg"} <= set(doc) for doc in logs)

        write_config(tmp_path / "site.toml", stan_server, pg_url, port, level="debug",
                     retention=7)
        mark = len(svc.lines)
        svc.signal(signal.SIGHUP)
        assert '"retention_days=7"' in await svc.wait_for("retention_days=", after=mark)
        await svc.wait_for("config reloaded", after=mark)

        svc.signal(signal.SIGTERM)
        assert await svc.wait() == 0
        assert "stopped: 10 readings saved" in await svc.wait_for("stopped:")
        await sc.close()
        await nc.close()
    finally:
        await svc.stop()


async def test_listener_refuses_to_start_without_its_dependencies(stan_server, tmp_path):
    nowhere = f"nats://127.0.0.1:{free_port()}"
    rc, out, err = await run_once("listener", "--nats", nowhere, "--db", str(tmp_path / "f.db"),
                                  "--ops-port", "0")
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith(f"stanfleet: cannot reach NATS at {nowhere}")

    bad_db = f"postgresql://fleet@127.0.0.1:{free_port()}/fleet"
    cfg = write_config(tmp_path / "site.toml", stan_server, bad_db, 0)
    rc, out, err = await run_once("listener", "--config", cfg)
    assert rc == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stanfleet: cannot reach PostgreSQL at {bad_db}"), err
    assert "Traceback" not in err


async def test_a_taken_ops_port_is_one_line(stan_server, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = await run_once("listener", "--nats", stan_server.nats_url,
                                    "--db", str(tmp_path / "f.db"), "--ops-port", str(port))
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"stanfleet: cannot serve /healthz, /readyz, /metrics on 127.0.0.1:{port}")
