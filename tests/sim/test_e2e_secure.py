"""A secure fleet end to end: TLS with our own CA on NATS and on the artifact
server, passwords made by `stanfleet creds`, the streaming server's
authorization on (docs/security-design.md). Real firmware on simulated
devices; the services connect with their own roles' credentials.

Waiting is always for an event (a device's log line, messages arriving) or,
for the listener's database, which has none, by polling it (tests.waiting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest
from conftest import FACTORY, GOOD, Backend, cli
from stanfleet.fleet.bundle_build import build_bundle
from stanfleet.fleet.firmware_code import FIRMWARE_DIR
from stanfleet.fleet.runner import FleetRunner
from stanfleet.security import creds
from stanfleet.security.signing import load_signer
from stanfleet.services.artifacts import ArtifactServer
from stanfleet.services.connection import open_session
from stanfleet.services.listener import Listener, ListenerConfig
from stanfleet.services.readings_db import ReadingsDB
from stanfleet.streaming import StreamingServer
from stanfleet.up import Fleet, Security

from tests.waiting import eventually

DEVICES = ("5EC1", "5EC2")
REFUSED = "stanfleet: nats connect failed"


@dataclass
class SecureBackend:
    security: Security
    server: StreamingServer
    artifacts: ArtifactServer
    releases: Path
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.nats_url

    @property
    def cluster_id(self) -> str:
        return self.server.opts.cluster_id

    @property
    def url_base(self) -> str:
        return f"https://127.0.0.1:{self.artifacts.port}"

    async def session(self, role: str, client_id: str | None = None):
        return await open_session(self.url, self.cluster_id, client_id or f"{role}-e2e",
                                  once=True, **self.security.service_options(role))

    def fleet(self, config: dict[str, dict] | None = None) -> FleetRunner:
        """Both devices, with their credentials and the CA; ``config`` overrides
        config.json keys per device."""
        extra = config or {}

        def device_config(device_id: str) -> dict:
            return {**self.security.device_config(device_id), "sending_frequency": 1,
                    **extra.get(device_id, {})}
        return FleetRunner(self.url, self.cluster_id, self.tmp / "fleet", ids=list(DEVICES),
                           releases_dir=self.releases, factory_version=FACTORY,
                           credentials=device_config, ca_der=self.security.ca_der())


@pytest.fixture
async def secure(tmp_path, releases, monkeypatch):
    monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)  # the hashing, not the test, is slow
    security = Security(str(tmp_path / "security"), "test-cluster")
    await asyncio.to_thread(security.ensure, list(DEVICES))
    # Devices of a secure fleet install only releases signed with its key.
    signed = tmp_path / "releases"
    signed.mkdir()
    shutil.copy(releases / f"{FACTORY}.bin", signed)
    await asyncio.to_thread(build_bundle, FIRMWARE_DIR, GOOD, signed / f"{GOOD}.bin",
                            load_signer(security.signing_key).sign)
    releases = signed
    server = StreamingServer(security.server_options("test-cluster", -1,
                                                     str(tmp_path / "broker")))
    await server.start()
    artifacts = ArtifactServer(str(releases), "127.0.0.1", 0,
                               ssl_context=security.ssl_context())
    await artifacts.start()
    yield SecureBackend(security, server, artifacts, releases, tmp_path)
    await artifacts.stop()
    await server.stop()


@pytest.fixture
async def running(secure):
    """Start a fleet (``await running(fleet)``); stopped at the end."""
    started = []

    async def start(fleet: FleetRunner) -> FleetRunner:
        started.append(fleet)
        await fleet.start()
        return fleet
    yield start
    for fleet in started:
        await fleet.stop()


async def backend_as(secure: SecureBackend, role: str) -> Backend:
    sc, nc = await secure.session(role)
    return Backend(sc, nc, secure.url_base, secure.releases)


async def close(*backends: Backend) -> None:
    for b in backends:
        await b.sc.close()
        await b.nc.close()


def passwords(secure: SecureBackend) -> list[str]:
    return [secure.security.device_config(d)["password"] for d in DEVICES]


def assert_no_secret_in_logs(fleet: FleetRunner, secrets: list[str]) -> None:
    for dev in fleet.devices.values():
        text = dev.log_path.read_text()
        for s in secrets:
            assert s not in text, f"device {dev.id} logged a password"


async def test_secure_fleet_stores_readings_applies_cfg_and_installs_over_https(
        secure, running, tmp_path):
    db = str(tmp_path / "fleet.db")
    listener = Listener(ListenerConfig(nats_url=secure.url, cluster_id=secure.cluster_id,
                                       name="secure", db_path=db,
                                       nats_options=secure.security.service_options("listener")))
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.ready.wait(), 30)
        fleet = await running(secure.fleet())
        for d in DEVICES:
            await fleet.expect(d, "stanfleet: connected", timeout=30)

        # Readings reach the listener (role listener) and its database.
        async def both_stored():
            rdb = ReadingsDB(db)
            try:
                return all(len(rdb.readings(d)) >= 2 for d in DEVICES)
            finally:
                rdb.close()
        await eventually(both_stored, timeout=30)

        # A cfg from the config-manager role is applied.
        config = await backend_as(secure, "config-manager")
        mark = fleet.mark(DEVICES[0])
        await config.cfg(DEVICES[0], sending_frequency=4)
        await fleet.expect(DEVICES[0], 'cfg applied seq=1 {"sending_frequency": 4}', since=mark)

        # A release from the release-manager role installs over HTTPS (the
        # device checks the artifact server against the same CA).
        release = await backend_as(secure, "release-manager")
        await release.release(GOOD)
        for d in DEVICES:
            await fleet.expect(d, f"ota healthy version={GOOD}", timeout=60)
            await fleet.expect(d, f"connected client=device-{d} version={GOOD}")
        await close(config, release)
        assert_no_secret_in_logs(fleet, passwords(secure))
    finally:
        await listener.stop()
        await asyncio.wait_for(task, 30)


async def test_wrong_password_is_refused_and_said_so_while_the_other_device_works(
        secure, running):
    bad, good = DEVICES
    wrong = "not-the-password-0123456789"
    fleet = await running(secure.fleet({bad: {"password": wrong}}))
    line = await fleet.expect(bad, REFUSED, timeout=30)
    assert "Authorization" in line
    await fleet.expect(good, "stanfleet: connected", timeout=30)
    watcher = await backend_as(secure, "listener")
    events = await watcher.collect(f"devices.{good}.events")
    await events.count(2)
    assert fleet.find(bad, "stanfleet: connected") is None
    await close(watcher)
    assert_no_secret_in_logs(fleet, passwords(secure) + [wrong])


async def test_revoked_device_is_cut_off_and_refused_while_the_other_keeps_working(
        secure, running):
    kept, revoked = DEVICES
    fleet = await running(secure.fleet())
    for d in DEVICES:
        await fleet.expect(d, "stanfleet: connected", timeout=30)
    mark = fleet.mark(revoked)
    await asyncio.to_thread(secure.security.store.revoke, revoked)
    # The reload closes its connection; reconnecting is refused.
    await fleet.expect(revoked, "stanfleet: disconnected", since=mark, timeout=30)
    line = await fleet.expect(revoked, "reconnect_failed", since=mark, timeout=30)
    assert "Authorization" in line
    # Booted again, it says so at its first connect.
    mark = fleet.mark(revoked)
    await fleet.reboot(revoked)
    line = await fleet.expect(revoked, REFUSED, since=mark, timeout=30)
    assert "Authorization" in line
    # The other device goes on publishing.
    watcher = await backend_as(secure, "listener")
    events = await watcher.collect(f"devices.{kept}.events")
    await events.count(2)
    await close(watcher)


async def test_services_need_their_credentials_and_the_ca(secure):
    from stanfleet.errors import CommandError
    from stanfleet.services.connection import secure_options

    with pytest.raises(CommandError, match="give --ca"):
        await open_session(secure.url, secure.cluster_id, "x", once=True)
    with pytest.raises(CommandError, match="refused us.*give --creds"):
        await open_session(secure.url, secure.cluster_id, "x", once=True,
                           **secure_options(ca=secure.security.certs.ca))
    # A role's session keeps to its role: the listener may not send cfg. The
    # broker stops the PubMsg (least privilege), so the client sees no PubAck.
    watcher = await backend_as(secure, "listener")
    with pytest.raises(Exception, match="not authorized|publish ack timeout"):
        await watcher.cfg(DEVICES[0], sending_frequency=2)
    await close(watcher)


# ---------------------------------------------------------------- stanfleet up


def up_args(data_dir: Path, **kw) -> argparse.Namespace:
    args = dict(devices=1, data_dir=str(data_dir), port=0, artifact_port=0, no_sim=False,
                cluster_id="test-cluster", plain=True, insecure=False)
    args.update(kw)
    return argparse.Namespace(**args)


async def plaintext_refused(url: str) -> bool:
    """Speak plain NATS to the port: the server wants TLS and answers no PONG."""
    host, port = url.split("://")[1].rsplit(":", 1)
    r, w = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await asyncio.wait_for(r.readline(), 10))[5:])
        w.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await w.drain()
        rest = await asyncio.wait_for(r.read(), 10)  # the server closes the connection
        return info.get("tls_required") is True and b"PONG" not in rest
    finally:
        w.close()


async def test_up_is_secure_by_default_and_reuses_its_security_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)
    fleet = Fleet(up_args(tmp_path / "data"))
    try:
        await fleet.start()
        url = fleet.server.nats_url
        assert url.startswith("tls://")
        dev = fleet.device_ids[0]
        await fleet.devices.expect(dev, "stanfleet: connected", timeout=60)
        assert await plaintext_refused(url)
        # TLS with our CA but without credentials: refused too.
        with pytest.raises(nats.errors.Error, match="Authorization"):
            await nats.connect(url, tls=ssl.create_default_context(cafile=fleet.security.certs.ca),
                               allow_reconnect=False, max_reconnect_attempts=0,
                               connect_timeout=5)
        # Artifacts over HTTPS only, with the same CA.
        base = fleet.artifacts_url
        assert base.startswith("https://")
        ctx = ssl.create_default_context(cafile=fleet.security.certs.ca)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/releases/{FACTORY}.bin", ssl=ctx) as resp:
                assert resp.status == 200
        banner = "\n".join(fleet.banner())
        assert "--ca " in banner and "--creds " in banner
        sec = fleet.security.dir
        ca = Path(fleet.security.certs.ca).read_bytes()
        device_creds = json.loads(Path(sec, "devices", f"device-{dev}.json").read_text())
        # Releases must be signed: the device holds the public key up made.
        flash_cfg = json.loads((fleet.devices.devices[dev].flash_dir / "config.json").read_text())
        assert flash_cfg["release_key"] == Path(sec, "release-signing.pub").read_text().strip()
    finally:
        await fleet.stop()

    # A rerun reuses the CA and the credentials; the device connects again.
    fleet = Fleet(up_args(tmp_path / "data"))
    try:
        await fleet.start()
        assert Path(fleet.security.certs.ca).read_bytes() == ca
        assert fleet.security.device_config(dev)["password"] == device_creds["password"]
        await fleet.devices.expect(dev, "stanfleet: connected", timeout=60)
        assert device_creds["password"] not in fleet.devices.device(dev).log_path.read_text()
    finally:
        await fleet.stop()


async def test_up_insecure_is_plaintext(tmp_path):
    fleet = Fleet(up_args(tmp_path / "data", no_sim=True, insecure=True))
    try:
        await fleet.start()
        assert fleet.server.nats_url.startswith("nats://")
        assert fleet.artifacts_url.startswith("http://")
        nc = await nats.connect(fleet.server.nats_url, allow_reconnect=False,
                                max_reconnect_attempts=0, connect_timeout=5)
        await nc.close()
    finally:
        await fleet.stop()


async def test_config_command_with_creds_and_ca(secure, running, tmp_path):
    dev = DEVICES[0]
    fleet = await running(secure.fleet())
    await fleet.expect(dev, "stanfleet: connected", timeout=30)
    sec = secure.security

    def cmd(role: str) -> list[str]:
        return ["config", "set", dev, "sending_frequency=6", "--new",
                "--db", str(tmp_path / "fleet.db"), "--nats", secure.url,
                "--ca", sec.certs.ca, "--creds", sec.service_creds(role)]
    rc, out = await cli(*cmd("listener"))
    # The broker refuses the PubMsg (least privilege); the command says so.
    assert rc == 1 and "permissions violation for publish" in out, out
    mark = fleet.mark(dev)
    rc, out = await cli(*cmd("config-manager"))
    assert rc == 0, out
    await fleet.expect(dev, 'cfg applied seq=1 {"sending_frequency": 6}', since=mark)
