"""Full MicroPython image updates into the ESP32's OTA partitions (hal/image.py),
on a simulated board whose partition table has ota_0/ota_1 (sim/esp32.py)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from stanfleet.services.artifacts import ArtifactServer

DEV = "1A6E"
TABLE = {"boot": "ota_0", "running": "ota_0", "verified": True}


@pytest.fixture
async def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    server = ArtifactServer(str(d), "127.0.0.1", 0)
    port = await server.start()
    yield d, f"http://127.0.0.1:{port}"
    await server.stop()


def image(d, version: str, data: bytes) -> dict:
    (d / f"{version}.bin").write_bytes(data)
    return {"kind": "image", "version": version, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


async def board_with_ota_partitions(make_fleet):
    fleet = await make_fleet(DEV)
    await fleet.expect(DEV, "stanfleet: connected")
    await fleet.power_cut(DEV)
    flash = fleet.devices[DEV].flash_dir
    (flash / "partitions.json").write_text(json.dumps(TABLE))
    await fleet.power_on(DEV)
    return fleet, flash


async def test_image_is_written_booted_marked_valid_and_acked(make_fleet, backend, images):
    d, url = images
    fleet, flash = await board_with_ota_partitions(make_fleet)
    data = os.urandom(10_000)
    status = await backend.collect(f"devices.{DEV}.status")
    await backend.publish("devices.releases", {**image(d, "1.22.0", data),
                                               "url": f"{url}/releases/1.22.0.bin"})
    await fleet.expect(DEV, "ota state=rebooting version=1.22.0", timeout=30)
    await fleet.expect(DEV, "image healthy version=1.22.0", timeout=30)
    await fleet.expect(DEV, "release acked seq=1 1.22.0 is not newer")
    table = json.loads((flash / "partitions.json").read_text())
    assert table["running"] == table["boot"] == "ota_1" and table["verified"]
    assert (flash / "ota_1.bin").read_bytes()[:len(data)] == data
    installed = await status.first(lambda s: s["image"] == "1.22.0")
    assert installed["version"] == "1.0.0"  # the app bundle is unchanged


async def test_image_that_does_not_boot_is_rolled_back(make_fleet, backend, images):
    d, url = images
    fleet, flash = await board_with_ota_partitions(make_fleet)
    status = await backend.collect(f"devices.{DEV}.status")
    await backend.publish("devices.releases", {**image(d, "1.22.0", b"BAD!" + bytes(5000)),
                                               "url": f"{url}/releases/1.22.0.bin"})
    await fleet.expect(DEV, "[rom] the image in the boot partition crashes", timeout=30)
    rolled_back = await status.first(lambda s: s["ota"]["state"] == "rolled_back", timeout=30)
    assert rolled_back["ota"]["reason"] == "image did not boot"
    await fleet.expect(DEV, "release acked seq=1 1.22.0 was rolled back here")
    assert json.loads((flash / "partitions.json").read_text())["running"] == "ota_0"


async def test_bad_image_hash_is_not_booted_and_not_acked(make_fleet, backend, images):
    d, url = images
    fleet, flash = await board_with_ota_partitions(make_fleet)
    msg = {**image(d, "1.22.0", os.urandom(6000)), "url": f"{url}/releases/1.22.0.bin"}
    msg["sha256"] = "0" * 64
    await backend.publish("devices.releases", msg)
    await fleet.expect(DEV, "ota state=failed version=1.22.0 reason=image sha256 mismatch",
                       timeout=30)
    assert json.loads((flash / "partitions.json").read_text())["boot"] == "ota_0"


async def test_board_without_ota_partitions_acks_an_image_as_not_installable(make_fleet,
                                                                              backend, images):
    d, url = images
    fleet = await make_fleet(DEV)
    await fleet.expect(DEV, "stanfleet: connected")
    await backend.publish("devices.releases", {**image(d, "1.22.0", b"x" * 100),
                                               "url": f"{url}/releases/1.22.0.bin"})
    line = await fleet.expect(DEV, "release acked seq=1")
    assert "no OTA partition" in line
