"""Heap of the device firmware on the MicroPython unix port.

One simulated device runs the real firmware (.mpy bundles built by
mpy-cross) through the seed's life: boot, connect, publish readings, apply a
cfg change, install an OTA release and reboot into it. The bench prints

  * the peak gc.mem_alloc() seen (a sampling thread, SIM_HEAP_TRACE),
  * the free heap the device reports in its status after each step,
  * the smallest -X heapsize in which the whole run completes (bisection),
  * what the simulator's own stand-in modules (machine, network, ...) take,
    which a board does not spend: there they are built into the firmware.

Run: .venv/bin/python bench/firmware_heap.py [--low 48] [--high 160]
The unix port is a 64-bit build: pointers, and so code objects and dicts,
take about twice what they take on the 32-bit ESP32.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402
from stanfleet.fleet.bundle_build import build_bundle, mpy_cross  # noqa: E402
from stanfleet.fleet.firmware_code import FIRMWARE_DIR  # noqa: E402
from stanfleet.fleet.runner import FleetRunner, micropython_binary  # noqa: E402
from stanfleet.services.artifacts import ArtifactServer  # noqa: E402
from stanfleet.streaming import ServerOptions, StreamingServer  # noqa: E402

DEV = "BEEF"
STEP_TIMEOUT = 30


def compiled_sim(dest: Path) -> Path:
    """sim/ with its stand-ins compiled, so parsing them is not charged to the firmware."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in (ROOT / "sim").glob("*.py"):
        if src.name == "board.py":
            shutil.copy(src, dest / src.name)
        else:
            subprocess.run([mpy_cross(), "-o", str(dest / f"{src.stem}.mpy"), str(src)], check=True)
    return dest / "board.py"


def stand_in_cost(sim_dir: Path, heap: str = "256k") -> int:
    """Bytes the stand-in modules keep on the heap once imported."""
    code = ("import gc;gc.collect();a=gc.mem_alloc()\n"
            "import machine,network,esp32,onewire,ds18x20,ntptime\n"
            "gc.collect();print(gc.mem_alloc()-a)")
    out = subprocess.run([micropython_binary(), "-X", f"heapsize={heap}", "-c", code],
                         env=dict(os.environ, MICROPYPATH=f"{sim_dir}:.frozen"),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


class Env:
    """Broker, streaming server, artifact server and a backend client: fresh for
    each run, so no run sees an earlier run's release."""

    def __init__(self, releases: Path, board: Path):
        self.releases, self.board = releases, board

    async def __aenter__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="heap-bench-"))
        self.broker = Broker(BrokerConfig(store_dir=str(self.tmp / "js")))
        self.broker.start()
        self.server = StreamingServer(ServerOptions(nats_url=self.broker.url))
        await self.server.start()
        self.artifacts = ArtifactServer(str(self.releases), "127.0.0.1", 0)
        port = await self.artifacts.start()
        self.url_base = f"http://127.0.0.1:{port}"
        self.nc = await nats.connect(self.broker.url)
        self.sc = Client()
        await self.sc.connect("test-cluster", "heap-bench", nats=self.nc)
        return self

    async def __aexit__(self, *exc):
        await self.sc.close()
        await self.nc.close()
        await self.artifacts.stop()
        await self.server.stop()
        self.broker.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def release(self, version: str) -> None:
        data = (self.releases / f"{version}.bin").read_bytes()
        await self.sc.publish("devices.releases", json.dumps({
            "ts": "2026-11-25T10:00:00Z", "version": version,
            "url": f"{self.url_base}/releases/{version}.bin", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}).encode())


async def run_once(releases: Path, board: Path, heap_kb: int, n: int) -> dict | None:
    """The figures of one complete run in ``heap_kb``, or None if it failed."""
    async with Env(releases, board) as env:
        return await _run(env, heap_kb, n)


async def _run(env: Env, heap_kb: int, n: int) -> dict | None:
    dev = f"{DEV}{n:04X}"
    statuses: list[dict] = []
    peak = [0]

    def on_line(_id: str, line: str) -> None:
        m = re.match(r"\[heap\] peak=(\d+)", line)
        if m:
            peak[0] = max(peak[0], int(m.group(1)))

    async def on_status(msg):
        statuses.append(json.loads(msg.data))

    sub = await env.sc.subscribe(f"devices.{dev}.status", cb=on_status)
    os.environ["SIM_HEAP_TRACE"] = "1"
    fleet = FleetRunner(env.broker.url, "test-cluster", env.tmp / f"run{n}", ids=[dev],
                        heap=f"{heap_kb}k", releases_dir=env.releases, board=env.board,
                        on_line=on_line, crash_pause_max=1)
    try:
        await fleet.start()
        await fleet.expect(dev, "stanfleet: connected", timeout=STEP_TIMEOUT)
        await env.sc.publish(f"devices.{dev}.cfg", b'{"sending_frequency": 1}')
        await fleet.expect(dev, "cfg applied", timeout=STEP_TIMEOUT)
        await env.release("1.1.0")
        await fleet.expect(dev, "ota healthy version=1.1.0", timeout=STEP_TIMEOUT)
        await fleet.expect(dev, "release acked", timeout=STEP_TIMEOUT)
        if fleet.devices[dev].crashes or fleet.find(dev, "MemoryError"):
            return None
        return {"peak": peak[0], "free": [s.get("mem_free") for s in statuses]}
    except AssertionError:
        return None
    finally:
        await fleet.stop()
        await sub.unsubscribe()


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="heap-bench-") as tmp:
        releases = Path(tmp) / "releases"
        releases.mkdir()
        build_bundle(FIRMWARE_DIR, "1.0.0", releases / "1.0.0.bin")
        build_bundle(FIRMWARE_DIR, "1.1.0", releases / "1.1.0.bin")
        board = compiled_sim(Path(tmp) / "sim")
        print(f"simulator stand-ins on the heap: {stand_in_cost(board.parent)} bytes "
              "(not spent on a board)")
        first = await run_once(releases, board, args.high, 0)
        if first is None:
            sys.exit(f"the run fails even in {args.high}k")
        print(f"in {args.high}k: peak gc.mem_alloc() {first['peak']} bytes "
              f"(collecting every 4 KB); free heap after gc, per status: {first['free']}")
        lo, hi = args.low, args.high  # lo may fail, hi works
        n = 0
        while hi - lo > args.step:
            mid = (lo + hi) // 2 // args.step * args.step
            n += 1
            ok = await run_once(releases, board, mid, n) is not None
            print(f"  {mid}k: {'ok' if ok else 'fails'}", flush=True)
            lo, hi = (lo, mid) if ok else (mid, hi)
        print(f"smallest heap for the whole run: {hi}k")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--low", type=int, default=48, help="KiB, assumed too small")
    p.add_argument("--high", type=int, default=192, help="KiB, must work")
    p.add_argument("--step", type=int, default=4, help="KiB resolution")
    asyncio.run(main(p.parse_args()))
