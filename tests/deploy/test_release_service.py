"""`stanfleet release serve --config`: the artifact server as a service, over
real TLS, with its endpoints, and a one-line failure at start."""

from __future__ import annotations

import signal

import aiohttp
from stanfleet.security import certs

from ..pg import free_port
from .serviceproc import ServiceProcess, run_once


async def test_artifact_service_over_tls_with_endpoints(tmp_path):
    paths = certs.init(str(tmp_path / "certs"), ["127.0.0.1"])
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "1.0.0.bin").write_bytes(b"bundle")
    port = free_port()
    cfg = tmp_path / "site.toml"
    cfg.write_text(f"""
[artifacts]
dir = "releases"
host = "127.0.0.1"
port = {port}
tls_cert = "{paths.server}"
tls_key = "{paths.server_key}"
""")
    svc = await ServiceProcess("release", "serve", "--config", str(cfg)).start()
    try:
        await svc.wait_for("artifact server on https://127.0.0.1")
        ctx = certs.client_context(paths.ca)
        base = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/releases/1.0.0.bin", ssl=ctx) as r:
                assert r.status == 200 and await r.read() == b"bundle"
            async with http.get(base + "/releases/9.9.9.bin", ssl=ctx) as r:
                assert r.status == 404
            async with http.get(base + "/healthz", ssl=ctx) as r:
                assert r.status == 200
            async with http.get(base + "/readyz", ssl=ctx) as r:
                assert r.status == 200
            async with http.get(base + "/metrics", ssl=ctx) as r:
                text = await r.text()
        assert "stanfleet_artifacts_downloads_total 1.0" in text
        assert "stanfleet_artifacts_not_found_total 1.0" in text
        svc.signal(signal.SIGTERM)
        assert await svc.wait() == 0
    finally:
        await svc.stop()


async def test_artifact_service_refuses_a_missing_folder_in_one_line(tmp_path):
    rc, _, err = await run_once("release", "serve", "--releases", str(tmp_path / "none"),
                                "--port", "0")
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"stanfleet: no releases directory {tmp_path / 'none'}")
