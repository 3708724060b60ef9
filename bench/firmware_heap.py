"""Heap of the device firmware on the MicroPython unix port, per build variant.

One simulated device runs the real firmware through its life: boot, connect,
publish readings, apply a cfg change, install an OTA release and reboot into
it, then the release is acked. By default it does so as `stanfleet up` runs
it: TLS to NATS and HTTPS to the artifact server with a private CA that the
device verifies (server_hostname checked), a password per device, and a
release signed with the fleet's key (the device checks the ed25519 signature).

A variant is a MicroPython unix port built from ../shared/micropython
(bench/mpbuild.py, cached under $TMPDIR/stanfleet-fwbuild):

  --bits 32|64   word size; 32 is the ESP32's
  --frozen       the firmware frozen into the binary (firmware/manifest.py),
                 as on a board image: its code runs from flash, not the heap

In every variant the simulator's stand-ins (machine, network, esp32, ...) are
frozen into the binary too, as a board has them built in, so the figures are
the firmware's own. With --frozen the OTA is an image update (hal/image.py;
the frozen app runs again after it) unless --ota bundle: a bundle in a slot
shadows the frozen app, so its code is on the heap again (docs/device.md).

Per variant it prints, beside the targets of issue 16:
  * the smallest -X heapsize (--step KiB) in which the whole run passes
    --runs times out of --runs (bisection, then confirmation),
  * the peak gc.mem_alloc() (a sampling thread) in the first run, made in
    --high KiB: the firmware collects every gc_threshold bytes (1/32 of the
    heap unless --gc-threshold), so the peak includes up to that much garbage,
  * the live heap after gc at idle (from the device's last status).

Run: .venv/bin/python bench/firmware_heap.py [--bits 32] [--frozen] [--no-tls] [--all]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT / "bench"))

import mpbuild  # noqa: E402
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402
from stanfleet.fleet.bundle_build import build_bundle  # noqa: E402
from stanfleet.fleet.firmware_code import FIRMWARE_DIR  # noqa: E402
from stanfleet.fleet.runner import FleetRunner  # noqa: E402
from stanfleet.security import creds  # noqa: E402
from stanfleet.security.signing import load_signer  # noqa: E402
from stanfleet.services.artifacts import ArtifactServer  # noqa: E402
from stanfleet.services.connection import open_session  # noqa: E402
from stanfleet.streaming import ServerOptions, StreamingServer  # noqa: E402
from stanfleet.up import Security  # noqa: E402

DEV = "BEEF0001"
CLUSTER = "test-cluster"
FACTORY, UPDATE, IMAGE = "1.0.0", "1.1.0", "1.22.0"
STEP_TIMEOUT = 30
PARTITIONS = {"boot": "ota_0", "running": "ota_0", "verified": True}

# Issue 16's targets (32-bit, TLS on); None: no target given.
TARGETS = {  # (bits, frozen): (heapsize KiB, peak bytes)
    (32, True): (48, 32 * 1024),
    (32, False): (64, None),
}
# KiB the first run (where the peak is sampled) is made in, when --high is
# not given: the peak includes up to 1/32 of the heap in garbage, so it is
# taken in a heap of the size a board would give (docs/device.md's figures).
DEFAULT_HIGH = {(32, True): 48, (32, False): 96, (64, True): 80, (64, False): 128}


@dataclass
class Variant:
    bits: int
    frozen: bool
    ota: str  # "bundle" or "image"

    @property
    def name(self) -> str:
        return f"{self.bits}-bit {'frozen' if self.frozen else 'not frozen'}, {self.ota} OTA"


class Fixture:
    """What every run shares: the releases and, with TLS, the fleet's security
    directory (CA, device password, signing key), as `stanfleet up` makes it."""

    def __init__(self, tmp: Path, tls: bool, extra: dict | None = None):
        self.tmp, self.tls = tmp, tls
        self.extra = dict(extra or {})  # more config.json keys (gc_threshold)
        self.releases = tmp / "releases"
        self.releases.mkdir()
        self.security = None
        sign = None
        if tls:
            creds.BCRYPT_ROUNDS = 4  # the broker's password hashing, not the device, is slow
            self.security = Security(str(tmp / "security"), CLUSTER)
            self.security.ensure([DEV])
            self.signer = load_signer(self.security.signing_key)
            sign = self.signer.sign
        build_bundle(FIRMWARE_DIR, FACTORY, self.releases / f"{FACTORY}.bin", sign)
        build_bundle(FIRMWARE_DIR, UPDATE, self.releases / f"{UPDATE}.bin", sign)
        # A stand-in image: the simulated bootloader boots the same binary again.
        (self.releases / f"{IMAGE}.bin").write_bytes(b"image" + bytes(40_000))
        self.board = tmp / "sim" / "board.py"  # stand-ins are frozen into the binary
        self.board.parent.mkdir()
        shutil.copy(ROOT / "sim" / "board.py", self.board)

    def release_msg(self, url_base: str, kind: str) -> dict:
        version = IMAGE if kind == "image" else UPDATE
        data = (self.releases / f"{version}.bin").read_bytes()
        msg = {"ts": "2026-11-25T10:00:00Z", "version": version,
               "url": f"{url_base}/releases/{version}.bin", "size": len(data),
               "sha256": hashlib.sha256(data).hexdigest()}
        if kind == "image":
            msg["kind"] = "image"
            if self.security is not None:
                stmt = f"stanfleet-image {version} {msg['sha256']}".encode()
                msg["sig"] = self.signer.sign(stmt).hex()
        return msg


class Env:
    """Streaming server (its own nats-server), artifact server and a backend
    client: fresh for each run, so no run sees an earlier run's state."""

    def __init__(self, fx: Fixture, n: int):
        self.fx, self.dir = fx, fx.tmp / f"run{n}"

    async def __aenter__(self):
        fx = self.fx
        if fx.tls:
            sec = fx.security
            self.broker = None
            self.server = StreamingServer(sec.server_options(CLUSTER, -1, str(self.dir / "broker")))
            await self.server.start()
            self.url = self.server.nats_url
            self.artifacts = ArtifactServer(str(fx.releases), "127.0.0.1", 0,
                                            ssl_context=sec.ssl_context())
            port = await self.artifacts.start()
            self.url_base = f"https://127.0.0.1:{port}"
            self.sc, self.nc = await open_session(self.url, CLUSTER, "heap-bench", once=True,
                                                  **sec.service_options("admin"))
        else:
            self.broker = Broker(BrokerConfig(store_dir=str(self.dir / "js")))
            self.broker.start()
            self.server = StreamingServer(ServerOptions(nats_url=self.broker.url))
            await self.server.start()
            self.url = self.broker.url
            self.artifacts = ArtifactServer(str(fx.releases), "127.0.0.1", 0)
            port = await self.artifacts.start()
            self.url_base = f"http://127.0.0.1:{port}"
            self.nc = await nats.connect(self.url)
            self.sc = Client()
            await self.sc.connect(CLUSTER, "heap-bench", nats=self.nc)
        return self

    async def __aexit__(self, *exc):
        await self.sc.close()
        await self.nc.close()
        await self.artifacts.stop()
        await self.server.stop()
        if self.broker is not None:
            self.broker.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def fleet(self, binary: Path, heap_kb: int, on_line) -> FleetRunner:
        fx = self.fx
        cfg = dict(fx.extra)
        kw = {"credentials": lambda _id: dict(cfg)}
        if fx.tls:
            cfg.update(fx.security.device_config(DEV), sending_frequency=1)
            kw["ca_der"] = fx.security.ca_der()
        return FleetRunner(self.url, CLUSTER, self.dir / "fleet", ids=[DEV], heap=f"{heap_kb}k",
                           releases_dir=fx.releases, factory_version=FACTORY, board=fx.board,
                           micropython=str(binary), on_line=on_line, crash_pause_max=1, **kw)


async def run_once(fx: Fixture, binary: Path, v: Variant, heap_kb: int, n: int,
                   trace: bool = False) -> dict | None:
    """The figures of one complete run in ``heap_kb``, or None if it failed.
    ``trace``: print the device's log, where each new heap peak shows."""
    async with Env(fx, n) as env:
        statuses: list[dict] = []
        seen = {"peak": 0, "total": 0}

        def on_line(_id: str, line: str) -> None:
            if trace:
                print("    | " + line, flush=True)
            m = re.match(r"\[heap\] (peak|total)=(\d+)", line)
            if m:
                key = m.group(1)
                seen[key] = max(seen[key], int(m.group(2)))

        status_ev = asyncio.Event()

        async def on_status(msg):
            statuses.append(json.loads(msg.data))
            status_ev.set()

        sub = await env.sc.subscribe(f"devices.{DEV}.status", cb=on_status)
        fleet = env.fleet(binary, heap_kb, on_line)
        try:
            await fleet.start()
            await fleet.expect(DEV, "stanfleet: connected", timeout=STEP_TIMEOUT)
            if v.ota == "image":  # a board whose partition table has ota_0/ota_1
                await fleet.power_cut(DEV)
                flash = fleet.devices[DEV].flash_dir
                (flash / "partitions.json").write_text(json.dumps(PARTITIONS))
                mark = fleet.mark(DEV)
                await fleet.power_on(DEV)
                await fleet.expect(DEV, "stanfleet: connected", since=mark, timeout=STEP_TIMEOUT)
            await env.sc.publish(f"devices.{DEV}.cfg", b'{"sending_frequency": 1}')
            await fleet.expect(DEV, "cfg applied", timeout=STEP_TIMEOUT)
            await env.sc.publish("devices.releases",
                                 json.dumps(fx.release_msg(env.url_base, v.ota)).encode())
            healthy = (f"image healthy version={IMAGE}" if v.ota == "image"
                       else f"ota healthy version={UPDATE}")
            await fleet.expect(DEV, healthy, timeout=STEP_TIMEOUT)
            await fleet.expect(DEV, "release acked", timeout=STEP_TIMEOUT)
            # Idle: the status the device sends once the update is good (its
            # mem_free is taken right after a gc.collect()).
            want = IMAGE if v.ota == "image" else UPDATE

            def settled() -> bool:
                return bool(statuses) and statuses[-1]["ota"] == {
                    "state": "installed", "version": want, "reason": ""}

            async def wait_settled():
                while not settled():
                    status_ev.clear()
                    await status_ev.wait()
            await asyncio.wait_for(wait_settled(), STEP_TIMEOUT)
            if fleet.devices[DEV].crashes or fleet.find(DEV, "MemoryError"):
                return None
            free = statuses[-1]["mem_free"]
            live = seen["total"] - free if seen["total"] else None
            return {"peak": seen["peak"], "live": live}
        except (AssertionError, asyncio.TimeoutError):
            return None
        finally:
            await fleet.stop()
            await sub.unsubscribe()


async def passes(fx, binary, v, heap_kb, runs, n0) -> bool:
    for i in range(runs):
        if await run_once(fx, binary, v, heap_kb, n0 + i) is None:
            return False
    return True


async def measure(fx: Fixture, v: Variant, args) -> dict:
    binary = mpbuild.binary(v.bits, v.frozen, FACTORY, stand_ins=True)
    high = args.high or DEFAULT_HIGH[(v.bits, v.frozen)]
    first = await run_once(fx, binary, v, high, 0, args.trace)
    if first is None:
        raise SystemExit(f"{v.name}: the run fails even in {high}k")
    print(f"  {v.name}: in {high}k peak={first['peak']} live={first['live']}", flush=True)
    lo, hi, n = args.low, high, 1  # lo may fail, hi works
    while hi - lo > args.step:
        mid = (lo + hi) // 2 // args.step * args.step
        ok = await run_once(fx, binary, v, mid, n) is not None
        n += 1
        print(f"  {v.name}: {mid}k {'ok' if ok else 'fails'}", flush=True)
        lo, hi = (lo, mid) if ok else (mid, hi)
    # Near the limit the failures are fragmentation: a figure counts only if
    # every one of --runs runs passes at it.
    while not await passes(fx, binary, v, hi, args.runs, n):
        n += args.runs
        print(f"  {v.name}: {hi}k not {args.runs}/{args.runs}", flush=True)
        hi += args.step
    print(f"  {v.name}: {hi}k {args.runs}/{args.runs}", flush=True)
    return {"heap": hi, **first}


def report(v: Variant, r: dict, tls: bool) -> str:
    heap_t, peak_t = TARGETS.get((v.bits, v.frozen), (None, None)) if tls else (None, None)

    def beside(value, target, unit=""):
        if target is None:
            return f"{value}{unit} (no target)"
        return f"{value}{unit} (target <= {target}{unit}: {'met' if value <= target else 'MISSED'})"
    kib = 1024
    return (f"{v.name}, TLS {'on' if tls else 'off'}:\n"
            f"  smallest heap, {r['runs']}/{r['runs']} runs: {beside(r['heap'], heap_t, 'k')}\n"
            f"  peak gc.mem_alloc():        {beside(r['peak'], peak_t)} "
            f"= {r['peak'] / kib:.1f} KiB\n"
            f"  live heap after gc at idle: {r['live']} bytes = {(r['live'] or 0) / kib:.1f} KiB "
            "(no target)")


async def main(args) -> None:
    if args.all:
        variants = [(32, True), (32, False), (64, True), (64, False)]
    else:
        variants = [(args.bits, args.frozen)]
    for bits, _ in variants:
        try:
            mpbuild.check(bits)
        except mpbuild.Unavailable as e:
            raise SystemExit(f"firmware_heap: {e}")
    os.environ["SIM_HEAP_TRACE"] = "1"
    # The simulator's pollable TLS sockets (sim/tls_poll.py) are not the
    # firmware's: a board's sockets wake its event loop in C, on no heap.
    os.environ["SIM_TLS_POLL"] = "0"
    results = []
    with tempfile.TemporaryDirectory(prefix="heap-bench-") as tmp:
        extra = {} if args.gc_threshold is None else {"gc_threshold": args.gc_threshold}
        fx = Fixture(Path(tmp), tls=not args.no_tls, extra=extra)
        for bits, frozen in variants:
            ota = args.ota or ("image" if frozen else "bundle")
            v = Variant(bits, frozen, ota)
            r = await measure(fx, v, args)
            r["runs"] = args.runs
            results.append((v, r))
    print()
    for v, r in results:
        print(report(v, r, not args.no_tls))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, choices=(32, 64), default=32)
    p.add_argument("--frozen", action="store_true", help="the firmware frozen into the binary")
    p.add_argument("--all", action="store_true", help="32 and 64 bits, frozen and not")
    p.add_argument("--no-tls", action="store_true", help="plaintext NATS and HTTP, no credentials")
    p.add_argument("--gc-threshold", type=int,
                   help="config.json gc_threshold in bytes (default: the firmware's, 1/32 of the heap)")
    p.add_argument("--ota", choices=("bundle", "image"),
                   help="the update in the run (default: image when frozen, else bundle)")
    p.add_argument("--low", type=int, default=32, help="KiB, assumed too small")
    p.add_argument("--high", type=int, default=None,
                   help="KiB, must work; the peak is sampled there (default: 48 for 32-bit "
                        "frozen, 96 not frozen, 80 and 128 for 64-bit)")
    p.add_argument("--step", type=int, default=4, help="KiB resolution")
    p.add_argument("--trace", action="store_true",
                   help="print the device log of the first run, with each heap peak")
    p.add_argument("--runs", type=int, default=5, help="runs that must all pass at the figure")
    asyncio.run(main(p.parse_args()))
