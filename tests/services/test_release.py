"""Release manager commands and the artifact server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import aiohttp
import nats
from stanfleet.client import Client
from stanfleet.services.artifacts import ArtifactServer

from .test_config import known


async def cli(stan, tmp_path, *args) -> tuple[int, str, str]:
    conn = []
    if args[0] in ("publish", "promote", "status"):
        conn = ["--nats", stan.nats_url, "--cluster-id", stan.cluster_id,
                "--db", str(tmp_path / "fleet.db")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stanfleet.cli", "release", *args, *conn,
        "--releases", str(tmp_path / "releases"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def artifact(tmp_path, version="1.2.0", data=b"bundle-bytes" * 100) -> bytes:
    d = tmp_path / "releases"
    d.mkdir(exist_ok=True)
    (d / f"{version}.bin").write_bytes(data)
    return data


async def releases_feed(stan):
    nc = await nats.connect(stan.nats_url)
    sc = Client()
    await sc.connect(stan.cluster_id, "watcher", nats=nc)
    q = asyncio.Queue()

    async def cb(msg):
        await q.put(json.loads(msg.data))
    await sc.subscribe("devices.releases", cb=cb, deliver_all_available=True)
    return sc, nc, q


async def test_publish_and_promote_announce_size_hash_url_and_rollout(stan_server, tmp_path):
    data = artifact(tmp_path)
    rc, out, err = await cli(stan_server, tmp_path, "publish", "1.2.0", "--canary", "20",
                             "--url-base", "http://10.0.0.2:8080/")
    assert rc == 0, err
    assert "20% of devices (canary)" in out
    rc, out, err = await cli(stan_server, tmp_path, "promote", "1.2.0",
                             "--url-base", "http://10.0.0.2:8080")
    assert rc == 0, err
    sc, nc, q = await releases_feed(stan_server)
    first, second = await asyncio.wait_for(q.get(), 10), await asyncio.wait_for(q.get(), 10)
    assert first["version"] == "1.2.0" and first["rollout"] == 20
    assert first["size"] == len(data) and first["sha256"] == hashlib.sha256(data).hexdigest()
    assert first["url"] == "http://10.0.0.2:8080/releases/1.2.0.bin"
    assert second["rollout"] == 100
    await sc.close()
    await nc.close()


async def test_bad_release_input_is_a_one_line_error(stan_server, tmp_path):
    for args, message in [
        (["publish", "1.2", "--url-base", "http://x"], "invalid version"),
        (["publish", "9.9.9", "--url-base", "http://x"], "no artifact for 9.9.9"),
        (["promote", "9.9.9", "--url-base", "http://x"], "never published"),
        (["status", "9.9.9"], "no artifact for 9.9.9"),
        (["serve"], "no releases directory"),
    ]:
        rc, out, err = await cli(stan_server, tmp_path, *args)
        assert rc == 1 and message in err and "Traceback" not in err, (args, err)
    artifact(tmp_path)
    rc, _, err = await cli(stan_server, tmp_path, "publish", "1.2.0", "--canary", "0",
                           "--url-base", "http://x")
    assert rc == 1 and "between 1 and 100" in err


async def test_artifact_server_serves_exact_bytes_and_nothing_else(tmp_path):
    data = artifact(tmp_path, data=bytes(range(256)) * 1000)
    server = ArtifactServer(str(tmp_path / "releases"), "127.0.0.1", 0)
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/releases/1.2.0.bin") as r:
                assert r.status == 200 and await r.read() == data
                assert int(r.headers["Content-Length"]) == len(data)
            for bad in ("/releases/9.9.9.bin", "/releases/..%2Ffleet.db", "/etc/passwd"):
                async with http.get(f"http://127.0.0.1:{port}{bad}") as r:
                    assert r.status == 404
    finally:
        await server.stop()


async def test_status_shows_each_device_version_and_ota_state(stan_server, tmp_path):
    artifact(tmp_path)
    known(tmp_path / "fleet.db", "AAAA", "BBBB", "CCCC", "DDDD")
    nc = await nats.connect(stan_server.nats_url)
    sc = Client()
    await sc.connect(stan_server.cluster_id, "devices", nats=nc)
    ts = "2026-11-25T10:00:00Z"
    await sc.publish("devices.AAAA.status", json.dumps(
        {"ts": ts, "version": "1.2.0", "ota": {"state": "installed", "version": "1.2.0"}}).encode())
    await sc.publish("devices.BBBB.status", json.dumps(
        {"ts": ts, "version": "1.1.0",
         "ota": {"state": "failed", "version": "1.2.0", "reason": "sha256 mismatch"}}).encode())
    await sc.publish("devices.CCCC.status", json.dumps(
        {"ts": ts, "version": "1.1.0",
         "ota": {"state": "rolled_back", "version": "1.2.0", "reason": "not healthy"}}).encode())
    rc, out, err = await cli(stan_server, tmp_path, "status", "1.2.0")
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["AAAA"].split()[1:3] == ["1.2.0", "installed"]
    assert rows["BBBB"].split()[1:3] == ["1.1.0", "failed"] and "sha256 mismatch" in rows["BBBB"]
    assert "rolled back" in rows["CCCC"]
    assert "unknown" in rows["DDDD"]
    assert "1/4 installed" in out.splitlines()[0]
    await sc.close()
    await nc.close()
