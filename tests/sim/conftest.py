"""End-to-end fixtures: the real firmware on simulated devices (MicroPython unix
port, one process each) against our streaming server on a real nats-server,
with the release manager's artifact server. The backend roles are played by
the CPython STAN client, as the services do."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from stanfleet.client import Client
from stanfleet.fleet.bundle_build import build_bundle
from stanfleet.fleet.firmware_code import FIRMWARE_DIR
from stanfleet.fleet.runner import FleetRunner
from stanfleet.services.artifacts import ArtifactServer

FACTORY = "1.0.0"
GOOD = "1.2.0"
BROKEN = "1.3.0"  # its app crashes at import: the device must roll back


async def cli(*args: str) -> tuple[int, str]:
    """Run a `stanfleet` command; (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stanfleet.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def stanfleet(stan, *args: str) -> tuple[int, str]:
    """Run a `stanfleet` command against the streaming server ``stan``."""
    return await cli(*args, "--nats", stan.nats_url, "--cluster-id", stan.cluster_id)


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> Path:
    """Bundles built once per session: the factory image, a good update, and an
    update whose app crashes on import."""
    d = tmp_path_factory.mktemp("releases")
    build_bundle(FIRMWARE_DIR, FACTORY, d / f"{FACTORY}.bin")
    build_bundle(FIRMWARE_DIR, GOOD, d / f"{GOOD}.bin")
    broken = tmp_path_factory.mktemp("broken-firmware") / "firmware"
    shutil.copytree(FIRMWARE_DIR, broken)
    (broken / "app" / "device.py").write_text('raise RuntimeError("this build is broken")\n')
    build_bundle(broken, BROKEN, d / f"{BROKEN}.bin")
    return d


@dataclass
class Backend:
    """A CPython STAN client in the test, playing listener, config and release manager."""

    sc: Client
    nc: object
    url_base: str
    releases: Path
    subs: list = field(default_factory=list)

    async def publish(self, channel: str, payload: dict | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.sc.publish(channel, data)

    async def cfg(self, device: str, **settings) -> None:
        await self.publish(f"devices.{device}.cfg", {"ts": "2026-11-25T10:00:00Z", **settings})

    async def release(self, version: str, **override) -> None:
        import hashlib

        data = (self.releases / f"{version}.bin").read_bytes()
        msg = {"ts": "2026-11-25T10:00:00Z", "version": version,
               "url": f"{self.url_base}/releases/{version}.bin", "size": len(data),
               "sha256": hashlib.sha256(data).hexdigest()}
        msg.update(override)
        await self.publish("devices.releases", msg)

    async def collect(self, channel: str, **kwargs) -> "Collector":
        c = Collector()
        self.subs.append(await self.sc.subscribe(channel, cb=c.on_msg, **kwargs))
        return c


class Collector:
    """Messages of one subscription, with a way to wait for them."""

    def __init__(self):
        self.msgs = []
        self._changed = asyncio.Event()

    async def on_msg(self, msg) -> None:
        self.msgs.append(msg)
        self._changed.set()

    @property
    def json(self) -> list[dict]:
        return [json.loads(m.data) for m in self.msgs]

    async def wait_for(self, predicate, timeout: float = 30.0):
        async def loop():
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"condition not met in {timeout}s; have {len(self.msgs)} "
                                 f"messages, last: {self.json[-3:]}") from None

    async def first(self, match, timeout: float = 30.0) -> dict:
        """The first message (as JSON) that ``match`` accepts, once one has come.

        Returns the message itself: a test must not look at ``json[-1]``
        afterwards, since the device may have sent its next status by then."""
        found: list[dict] = []

        def seen(c) -> bool:
            found[:] = [j for j in c.json if match(j)][:1]
            return bool(found)

        await self.wait_for(seen, timeout)
        return found[0]

    async def count(self, n: int, timeout: float = 30.0) -> None:
        await self.wait_for(lambda c: len(c.msgs) >= n, timeout)


@pytest.fixture
async def backend(stan_server, releases):
    artifacts = ArtifactServer(str(releases), "127.0.0.1", 0)
    port = await artifacts.start()
    nc = await nats.connect(stan_server.nats_url)
    sc = Client()
    await sc.connect(stan_server.cluster_id, "e2e-backend", nats=nc)
    b = Backend(sc, nc, f"http://127.0.0.1:{port}", releases)
    yield b
    await sc.close()
    await nc.close()
    await artifacts.stop()


@pytest.fixture
async def make_fleet(stan_server, releases, tmp_path):
    """Factory: FleetRunner for the given device IDs; extra config.json keys
    per device via ``config``."""
    fleets = []

    async def start(*ids: str, config: dict | None = None, **kwargs) -> FleetRunner:
        extra = dict(config or {})
        # STANFLEET_SIM_MICROPYTHON=PATH runs these tests on another build, e.g.
        # the frozen 32-bit one of bench/mpbuild.py (docs/device.md "Board image").
        if os.environ.get("STANFLEET_SIM_MICROPYTHON"):
            kwargs.setdefault("micropython", os.environ["STANFLEET_SIM_MICROPYTHON"])
        fleet = FleetRunner(stan_server.nats_url, stan_server.cluster_id, tmp_path / "fleet",
                            ids=list(ids), releases_dir=releases, factory_version=FACTORY,
                            credentials=lambda _id: dict(extra), **kwargs)
        fleets.append(fleet)
        await fleet.start()
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()
