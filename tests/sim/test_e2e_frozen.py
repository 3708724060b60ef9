"""The fleet end to end on a board image with the app frozen in: the MicroPython
unix port built 32-bit (an ESP32's word size) from ../shared/micropython with
firmware/manifest.py (bench/mpbuild.py), so the app runs from frozen bytecode.

How the app changes over the air on such a board (docs/device.md "Board image"):
a bundle goes into a slot whose modules shadow the frozen ones; an image update
replaces the frozen app, which then runs again instead of the older bundle.

Slow: the first run builds MicroPython (a few minutes); later runs reuse the
cached binary. Skipped, with the reason, without gcc-multilib or the shared
MicroPython source.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import BROKEN, FACTORY
from stanfleet.fleet.bundle_build import build_bundle
from stanfleet.fleet.firmware_code import FIRMWARE_DIR

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import mpbuild  # noqa: E402

pytestmark = pytest.mark.slow

DEV = "F20E"
SHADOW = "1.4.0"  # a bundle whose app says so at import: proves the slot's code runs
MARK = "stanfleet: app from a slot bundle"
TABLE = {"boot": "ota_0", "running": "ota_0", "verified": True}


@pytest.fixture(scope="session")
def frozen_micropython() -> str:
    try:
        mpbuild.check(32)
    except mpbuild.Unavailable as e:
        pytest.skip(f"no frozen 32-bit MicroPython build here: {e}")
    # The factory version is frozen in: the image and the factory bundle are one app.
    return str(mpbuild.binary(32, frozen=True, version=FACTORY))


@pytest.fixture(scope="session")
def shadow_release(releases, tmp_path_factory) -> str:
    fw = tmp_path_factory.mktemp("shadow-firmware") / "firmware"
    shutil.copytree(FIRMWARE_DIR, fw)
    dev = fw / "app" / "device.py"
    dev.write_text(f'print("{MARK}")\n' + dev.read_text())
    build_bundle(fw, SHADOW, releases / f"{SHADOW}.bin")
    return SHADOW


def boot_line(slot: str, version: str, trial: bool, frozen: bool) -> str:
    return f"boot slot={slot} version={version} trial={trial} frozen={frozen}"


async def test_frozen_app_boots_sends_readings_and_applies_cfg(make_fleet, backend,
                                                               frozen_micropython):
    events = await backend.collect(f"devices.{DEV}.events")
    fleet = await make_fleet(DEV, micropython=frozen_micropython, heap="64k")
    await fleet.expect(DEV, boot_line("a", FACTORY, False, True))
    await fleet.expect(DEV, f"stanfleet: connected client=device-{DEV} version={FACTORY}")
    await events.count(2)
    assert set(events.json[0]) == {"ts", "temp"}
    await backend.cfg(DEV, sending_frequency=1)
    await fleet.expect(DEV, 'cfg applied seq=1 {"sending_frequency": 1}')
    assert not fleet.find(DEV, MARK)


async def test_bundle_shadows_the_frozen_app_and_stays(make_fleet, backend, frozen_micropython,
                                                      shadow_release):
    fleet = await make_fleet(DEV, micropython=frozen_micropython)
    await fleet.expect(DEV, "stanfleet: connected")
    status = await backend.collect(f"devices.{DEV}.status")
    await backend.release(shadow_release)
    await fleet.expect(DEV, boot_line("b", SHADOW, True, False), timeout=30)
    await fleet.expect(DEV, MARK)
    await fleet.expect(DEV, f"ota healthy version={SHADOW}")
    await status.wait_for(lambda c: c.json and c.json[-1]["version"] == SHADOW)
    # Once good, the bundle is the app at every boot, ahead of the frozen one.
    mark = fleet.mark(DEV)
    await fleet.reboot(DEV)
    await fleet.expect(DEV, boot_line("b", SHADOW, False, False), since=mark)
    await fleet.expect(DEV, MARK, since=mark)


async def test_broken_bundle_rolls_back_to_the_frozen_app(make_fleet, backend,
                                                         frozen_micropython):
    fleet = await make_fleet(DEV, micropython=frozen_micropython)
    await fleet.expect(DEV, "stanfleet: connected")
    await backend.release(BROKEN)
    await fleet.expect(DEV, boot_line("b", BROKEN, True, False), timeout=30)
    await fleet.expect(DEV, boot_line("a", FACTORY, False, True), timeout=60)
    await fleet.expect(DEV, f"release acked seq=1 {BROKEN} was rolled back here")


async def test_image_update_replaces_the_frozen_app_and_it_runs_again(
        make_fleet, backend, frozen_micropython, shadow_release):
    fleet = await make_fleet(DEV, micropython=frozen_micropython)
    await fleet.expect(DEV, "stanfleet: connected")
    await fleet.power_cut(DEV)
    flash = fleet.devices[DEV].flash_dir
    (flash / "partitions.json").write_text(json.dumps(TABLE))
    await fleet.power_on(DEV)
    await backend.release(shadow_release)
    await fleet.expect(DEV, f"ota healthy version={SHADOW}", timeout=30)

    # The simulated board boots the same binary from either partition: the
    # "new image" carries the same frozen app, which must now win over the slot.
    data = b"image" + bytes(8000)
    (backend.releases / "1.22.0.bin").write_bytes(data)
    status = await backend.collect(f"devices.{DEV}.status")
    mark = fleet.mark(DEV)
    await backend.publish("devices.releases", {
        "kind": "image", "version": "1.22.0", "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "url": f"{backend.url_base}/releases/1.22.0.bin"})
    # The install runs in a boot of its own, still the slot's app; from the
    # new image's boot on, the frozen app runs.
    await fleet.expect(DEV, "ota state=rebooting version=1.22.0", since=mark, timeout=30)
    mark = fleet.mark(DEV)
    await fleet.expect(DEV, boot_line("b", FACTORY, False, True), since=mark, timeout=30)
    await fleet.expect(DEV, "image healthy version=1.22.0", since=mark)
    await status.wait_for(lambda c: c.json and c.json[-1]["image"] == "1.22.0"
                          and c.json[-1]["version"] == FACTORY)
    assert not fleet.find(DEV, MARK, since=mark)
    mark = fleet.mark(DEV)
    await fleet.reboot(DEV)
    await fleet.expect(DEV, boot_line("b", FACTORY, False, True), since=mark)
    # The running app is the frozen one: its version decides what is newer.
    await backend.release(FACTORY)
    await fleet.expect(DEV, f"{FACTORY} is not newer", since=mark)
