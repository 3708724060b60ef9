"""Signed releases end to end: real firmware on simulated devices that hold a
release_key in config.json, our streaming server, the artifact server.

The attacker here controls an artifact server and the release message (size
and sha256 made to match what it serves): only the signature of the
manifest, which lists every file's sha256, stands in the way.
"""

from __future__ import annotations

import hashlib
import re

import nats
import pytest
from conftest import FACTORY, GOOD, Backend
from stanfleet.client import Client
from stanfleet.fleet.bundle_build import slot_files
from stanfleet.fleet.firmware_code import FIRMWARE_DIR
from stanfleet.security.signing import keygen, load_signer
from stanfleet.services.artifacts import ArtifactServer

from tests.services.test_signing import tampered

DEV = "5A61"
NOT_OURS = "bad signature: the manifest is not signed by the release key"


@pytest.fixture(scope="session")
def fleet_key(tmp_path_factory):
    return load_signer(keygen(tmp_path_factory.mktemp("fleet-keys")).private_path)


@pytest.fixture(scope="session")
def signed_bundles(tmp_path_factory, fleet_key) -> dict[str, bytes]:
    """GOOD signed by the fleet's key, and what an attacker makes of it."""
    attacker = load_signer(keygen(tmp_path_factory.mktemp("attacker-keys")).private_path)
    return tampered(fleet_key, attacker, slot_files(FIRMWARE_DIR), "app/device.mpy", GOOD)


async def _serve(path) -> tuple[ArtifactServer, str]:
    server = ArtifactServer(str(path), "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{await server.start()}"


@pytest.fixture
async def signed_backend(stan_server, signed_bundles, tmp_path):
    """The backend, its artifact server holding the genuine signed GOOD; and
    ``attacker``, an artifact server of its own."""
    ours, theirs = tmp_path / "releases", tmp_path / "attacker"
    ours.mkdir()
    theirs.mkdir()
    (ours / f"{GOOD}.bin").write_bytes(signed_bundles["genuine"])
    artifacts, url = await _serve(ours)
    evil_artifacts, evil_url = await _serve(theirs)
    nc = await nats.connect(stan_server.nats_url)
    sc = Client()
    await sc.connect(stan_server.cluster_id, "e2e-signed-backend", nats=nc)
    b = Backend(sc, nc, url, ours)
    b.attacker_dir, b.attacker_url = theirs, evil_url
    yield b
    await sc.close()
    await nc.close()
    await artifacts.stop()
    await evil_artifacts.stop()


async def attack(backend, data: bytes) -> None:
    """Serve ``data`` as GOOD from the attacker's server and announce it with a
    size and sha256 that match it."""
    (backend.attacker_dir / f"{GOOD}.bin").write_bytes(data)
    await backend.publish("devices.releases", {
        "ts": "2026-11-25T10:00:00Z", "version": GOOD,
        "url": f"{backend.attacker_url}/releases/{GOOD}.bin",
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def device_log(fleet, dev: str) -> str:
    return fleet.device(dev).log_path.read_text()


async def test_signed_release_installs_and_verify_time_is_logged(
        make_fleet, signed_backend, fleet_key):
    fleet = await make_fleet(DEV, config={"release_key": fleet_key.public_hex})
    await fleet.expect(DEV, "stanfleet: connected")
    status = await signed_backend.collect(f"devices.{DEV}.status")
    await signed_backend.release(GOOD)
    line = await fleet.expect(DEV, "ota signature ok", timeout=30)
    await fleet.expect(DEV, f"boot slot=b version={GOOD} trial=True", timeout=30)
    await fleet.expect(DEV, f"ota healthy version={GOOD}")
    await status.wait_for(lambda c: c.json and c.json[-1]["version"] == GOOD
                          and c.json[-1]["ota"]["state"] == "installed")
    await fleet.expect(DEV, f"release acked seq=1 {GOOD} is not newer")
    load_ms, verify_ms = map(int, re.search(r"load_ms=(\d+) verify_ms=(\d+)", line).groups())
    print(f"\nunix port, in the OTA flow: ed25519+sha512 import {load_ms} ms, "
          f"verify {verify_ms} ms")
    assert verify_ms < 2000  # ~5 ms measured on x86-64; a generous bound for slow CI


@pytest.mark.parametrize("case,reason", [
    ("file bytes changed", "hash mismatch for app/device.mpy"),
    ("re-signed by the attacker", NOT_OURS),
    ("manifest edited, signature kept", NOT_OURS),
    ("unsigned", "bundle is not signed; this device installs only signed releases"),
])
async def test_tampered_release_is_refused_reported_and_never_acked(
        make_fleet, signed_backend, signed_bundles, fleet_key, case, reason):
    fleet = await make_fleet(DEV, config={"release_key": fleet_key.public_hex,
                                          "release_ack_wait": 1})
    await fleet.expect(DEV, "stanfleet: connected")
    status = await signed_backend.collect(f"devices.{DEV}.status")
    await attack(signed_backend, signed_bundles[case])
    # Redelivered after each ack_wait: it was not acked.
    for _ in range(3):
        mark = fleet.mark(DEV)
        await fleet.expect(DEV, f"ota state=failed version={GOOD} reason={reason}",
                           since=mark, timeout=30)
    failed = await status.first(lambda s: s["ota"]["state"] == "failed")
    assert failed["ota"] == {"state": "failed", "version": GOOD, "reason": reason}
    assert failed["version"] == FACTORY
    log = device_log(fleet, DEV)
    assert "release acked" not in log and f"version={GOOD} trial=True" not in log


async def test_genuine_release_installs_after_an_attack(
        make_fleet, signed_backend, signed_bundles, fleet_key):
    fleet = await make_fleet(DEV, config={"release_key": fleet_key.public_hex,
                                          "release_ack_wait": 1})
    await fleet.expect(DEV, "stanfleet: connected")
    await attack(signed_backend, signed_bundles["re-signed by the attacker"])
    await fleet.expect(DEV, "reason=bad signature", timeout=30)
    await signed_backend.release(GOOD)
    await fleet.expect(DEV, f"boot slot=b version={GOOD} trial=True", timeout=30)
    await fleet.expect(DEV, f"ota healthy version={GOOD}")
    # Once GOOD runs, the attacker's announcement is acked as "not newer": done with.
    await fleet.expect(DEV, f"release acked seq=1 {GOOD} is not newer")
    await fleet.expect(DEV, f"release acked seq=2 {GOOD} is not newer")


async def test_a_release_key_that_is_not_a_key_refuses_every_release(
        make_fleet, signed_backend):
    fleet = await make_fleet(DEV, config={"release_key": "not-hex", "release_ack_wait": 1})
    await fleet.expect(DEV, "stanfleet: connected")
    await signed_backend.release(GOOD)
    for _ in range(2):
        mark = fleet.mark(DEV)
        await fleet.expect(DEV, "reason=release_key in config.json is not a 64-hex-digit",
                           since=mark, timeout=30)
    assert "release acked" not in device_log(fleet, DEV)
