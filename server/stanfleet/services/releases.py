"""The release manager: artifacts, release messages, rollout state.

A release is a firmware bundle (see firmware/lib/bundle.py) stored under the
releases directory as `<version>.bin`, served over HTTP by the artifact
server, and announced on `devices.releases` as
`{"ts", "version", "url", "size", "sha256", "rollout"}`. Devices hold a
durable subscription with manual acks there and ack only after the install
succeeded. `rollout` is the percentage of the fleet that installs
(firmware/lib/rollout.py decides, from the device ID alone); promoting
publishes the same release again with a larger percentage.

Each device reports its version and OTA state on `devices.<ID>.status`;
`status()` reads the latest of each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass

from ..client import Client
from ..errors import CommandError
from ..fleet.firmware_code import load
from .configmgr import last_status
from .connection import DEFAULT_PUBLISH_ATTEMPTS, PUBLISH_ACK_WAIT
from .device_status import OtaReport

RELEASES_CHANNEL = "devices.releases"
ROLLOUTS = "rollouts.json"  # in the releases directory: version -> percentage published last
VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def check_version(version: str) -> str:
    if not VERSION.match(version):
        raise CommandError(f"invalid version {version!r}: use MAJOR.MINOR.PATCH, e.g. 1.2.0")
    return version


@dataclass
class Artifact:
    version: str
    path: str
    size: int
    sha256: str


class ReleaseDir:
    """The built bundles, one file per version."""

    def __init__(self, path: str):
        self.path = path

    def file(self, version: str) -> str:
        return os.path.join(self.path, f"{check_version(version)}.bin")

    def artifact(self, version: str) -> Artifact:
        path = self.file(version)
        if not os.path.exists(path):
            raise CommandError(f"no artifact for {version} in {self.path} "
                               f"(build it with: stanfleet release build {version})")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(65536), b""):
                h.update(chunk)
        return Artifact(version, path, os.path.getsize(path), h.hexdigest())

    def versions(self) -> list[str]:
        if not os.path.isdir(self.path):
            return []
        names = [n[:-4] for n in os.listdir(self.path) if n.endswith(".bin")]
        return sorted((v for v in names if VERSION.match(v)), key=version_key)


def rollouts(releases_dir: str) -> dict:
    """version -> the percentage it was last published to (release status, promote)."""
    try:
        with open(os.path.join(releases_dir, ROLLOUTS)) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_rollout(releases_dir: str, version: str, pct: int) -> None:
    data = rollouts(releases_dir)
    data[version] = pct
    tmp = os.path.join(releases_dir, ROLLOUTS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(releases_dir, ROLLOUTS))


def version_key(version: str) -> tuple:
    return tuple(int(p) for p in version.split("."))


def release_message(artifact: Artifact, url_base: str, rollout: int) -> bytes:
    return json.dumps({
        "ts": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "version": artifact.version,
        "url": f"{url_base.rstrip('/')}/releases/{artifact.version}.bin",
        "size": artifact.size,
        "sha256": artifact.sha256,
        "rollout": rollout,
    }).encode()


async def publish(sc: Client, artifact: Artifact, url_base: str, rollout: int) -> None:
    if not 1 <= rollout <= 100:
        raise CommandError("--canary must be a percentage between 1 and 100")
    await sc.publish(RELEASES_CHANNEL, release_message(artifact, url_base, rollout),
                     ack_wait=PUBLISH_ACK_WAIT, attempts=DEFAULT_PUBLISH_ATTEMPTS)


@dataclass
class DeviceState:
    device: str
    version: str | None
    ota_state: str  # pending, downloading, installed, failed, rolled back, not selected,
    # unknown, invalid status
    reason: str = ""
    seen: str = ""


async def fleet_state(sc: Client, devices: list[str], version: str | None,
                      rollout: int = 100) -> list[DeviceState]:
    """Each device's running version and where it stands with `version`."""
    rules = load("rollout")
    statuses = await asyncio.gather(*(last_status(sc, d) for d in devices))
    out = []
    for device, st in zip(devices, statuses):
        if st is None:
            out.append(DeviceState(device, None, "unknown", "no status reported"))
            continue
        if st.rejected:
            out.append(DeviceState(device, None, "invalid status", st.rejected))
            continue
        state, reason = ota_state(st.version, st.ota, version)
        if state == "pending" and not rules.selected(device, rollout):
            state = "not selected"
        out.append(DeviceState(device, st.version, state, reason, st.ts))
    return out


def ota_state(running: str | None, ota: OtaReport, version: str | None) -> tuple[str, str]:
    if version is None:
        return ota.state, ota.reason
    if running == version:
        return "installed", ""
    if ota.version == version:
        mapping = {"rolled_back": "rolled back", "rollback": "rolled back"}
        return mapping.get(ota.state, ota.state), ota.reason
    return "pending", ""
