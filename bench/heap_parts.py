"""What stays on the heap, piece by piece, for one variant of the device.

A device is provisioned as the simulator does it (TLS with the CA, its
password, the release key) against a fresh streaming server, then
bench/heap_parts_mp.py builds it up step by step in one MicroPython process
and prints what each step keeps after a collection. Companion of
bench/firmware_heap.py, which measures the whole run.

Run: .venv/bin/python bench/heap_parts.py [--bits 32] [--frozen] [--no-tls]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import mpbuild
from firmware_heap import CLUSTER, DEV, FACTORY, ROOT, Env, Fixture

sys.path.insert(0, str(ROOT / "server"))
from stanfleet.fleet.provision import make_device_fs  # noqa: E402


async def main(args) -> None:
    binary = mpbuild.binary(args.bits, args.frozen, FACTORY, stand_ins=True)
    with tempfile.TemporaryDirectory(prefix="heap-parts-") as tmp:
        fx = Fixture(Path(tmp), tls=not args.no_tls)
        async with Env(fx, 0) as env:
            flash = Path(tmp) / "flash"
            cfg = {"device_id": DEV, "cluster_id": CLUSTER, "nats": [env.url],
                   "sending_frequency": 3}
            ca = None
            if fx.tls:
                cfg.update(fx.security.device_config(DEV))
                cfg["server_hostname"] = "127.0.0.1"
                ca = fx.security.ca_der()
            await asyncio.to_thread(make_device_fs, flash, fx.releases / f"{FACTORY}.bin", cfg, ca)
            proc = await asyncio.create_subprocess_exec(
                str(binary), "-X", f"heapsize={args.heap}k", str(ROOT / "bench" / "heap_parts_mp.py"),
                cwd=flash, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ, SIM_UID=DEV, MICROPYPATH=".frozen:"))  # as boot.py orders it
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    print(f"{args.bits}-bit, {'frozen' if args.frozen else 'not frozen'}, "
          f"TLS {'off' if args.no_tls else 'on'}: bytes kept after gc")
    for line in text.splitlines():
        if line.startswith("PART "):
            _, n, what = line.split(" ", 2)
            print(f"  {int(n):7,d}  {what}")
        elif line.startswith("ALLOC "):
            _, per, us = line.split()
            print(f"  (a reading sent allocates {int(per):,d} bytes; one gc.collect() of this "
                  f"heap took {int(us)} us here)")
        elif line.startswith("TOTAL "):
            print(f"  {int(line.split()[1]):7,d}  total")
        elif not line.startswith(("stanfleet:", "nats ", "stan ")):
            print("  | " + line)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, choices=(32, 64), default=32)
    p.add_argument("--frozen", action="store_true")
    p.add_argument("--no-tls", action="store_true")
    p.add_argument("--heap", type=int, default=128, help="KiB")
    asyncio.run(main(p.parse_args()))
