"""MicroPython unix-port builds for the heap bench and the frozen-image tests.

``binary(bits=32, frozen=True)`` returns the path of a `micropython` built
from ../shared/micropython beside the checkout (build-unix.sh), 32- or 64-bit, with the
firmware frozen in (firmware/manifest.py) or not. Builds are cached in
``$TMPDIR/stanfleet-fwbuild`` under a hash of everything that goes into them
(build-unix.sh, the manifest, every firmware source, the app version), so a
second call costs nothing and an edited module gets a new binary.
``stand_ins=True`` also freezes the simulator's stand-ins (sim/: machine,
network, esp32, ...), which a board has built in, so a heap measured with
it is the firmware's alone. ``Unavailable`` says why a build cannot be made here (no shared/ folder, no
gcc-multilib for 32-bit); callers skip with that reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SIM = ROOT / "sim"
MANIFEST = FIRMWARE / "manifest.py"
# The shared folder lies beside the checkout (as CI lays it out).
SHARED = Path(os.environ.get("STANFLEET_MICROPYTHON_SRC", ROOT.parent / "shared" / "micropython"))
BUILD_SCRIPT = SHARED / "build-unix.sh"
DEFAULT_VERSION = "1.0.0"  # the app version frozen in: the simulator's factory bundle


class Unavailable(Exception):
    """A build that cannot be made on this machine; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "stanfleet-fwbuild"


def check(bits: int) -> None:
    """Raise Unavailable if a ``bits`` build cannot be made here."""
    if not BUILD_SCRIPT.exists() or not (SHARED / "src").is_dir():
        raise Unavailable(f"{BUILD_SCRIPT} and its src/ are not here (the shared MicroPython source)")
    if shutil.which("gcc") is None or shutil.which("make") is None:
        raise Unavailable("gcc and make are needed to build MicroPython")
    if bits == 32:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "t.c"
            src.write_text("#include <stdio.h>\nint main(void){return 0;}\n")
            r = subprocess.run(["gcc", "-m32", "-o", str(Path(tmp) / "t"), str(src)],
                               capture_output=True)
        if r.returncode != 0:
            raise Unavailable("gcc cannot build 32-bit programs: apt-get install -y gcc-multilib")


def stand_in_files() -> list[str]:
    """sim/'s stand-in modules; board.py is the simulator's boot, not a module."""
    return sorted(p.name for p in SIM.glob("*.py") if p.name != "board.py")


def _sources(frozen: bool, stand_ins: bool) -> list[Path]:
    files = []
    if frozen:
        files += [p for p in sorted(FIRMWARE.rglob("*.py"))
                  if "boards" not in p.relative_to(FIRMWARE).parts]
    if stand_ins:
        files += [SIM / n for n in stand_in_files()]
    return files


def _key(bits: int, frozen: bool, stand_ins: bool, version: str) -> str:
    h = hashlib.sha256()
    h.update(BUILD_SCRIPT.read_bytes())
    h.update(f"{bits} {frozen} {stand_ins} {version}".encode())
    for p in _sources(frozen, stand_ins):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _manifest(cache: Path, name: str, frozen: bool, stand_ins: bool) -> Path | None:
    if not frozen and not stand_ins:
        return None
    lines = []
    if frozen:
        lines.append(f"include({str(MANIFEST)!r})")
    if stand_ins:
        lines.append(f"freeze({str(SIM)!r}, {tuple(stand_in_files())!r})")
    path = cache / f"{name}.manifest.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare_workdir(work: Path) -> None:
    # build-unix.sh copies src/ on its first run; the copy is made here so the
    # micropython-lib check of the frozen-manifest rule (it looks for the
    # submodule's README.md, which the shared export lacks) can be satisfied.
    src = work / "src"
    if not (src / ".copied").exists():
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(SHARED / "src", src, symlinks=True)
        subprocess.run(["chmod", "-R", "u+w", str(src)], check=True)
        (src / ".copied").touch()
    readme = src / "lib" / "micropython-lib" / "README.md"
    if not readme.exists():
        readme.write_text("micropython-lib (placeholder for the build's submodule check)\n")


def binary(bits: int = 32, frozen: bool = True, version: str = DEFAULT_VERSION,
           stand_ins: bool = False, log=print) -> Path:
    """The cached binary for this variant, built first if needed."""
    check(bits)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = (f"micropython-{bits}-{'frozen' if frozen else 'plain'}{'-sim' if stand_ins else ''}"
            f"-{_key(bits, frozen, stand_ins, version)}")
    out = cache / name
    if out.exists():
        return out
    # One build at a time: the scratch tree is shared by every variant.
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        work = cache / "mpbuild"
        _prepare_workdir(work)
        cmd = ["bash", str(BUILD_SCRIPT), str(out) + ".tmp"]
        if bits == 32:
            cmd.append("--32")
        manifest = _manifest(cache, name, frozen, stand_ins)
        if manifest is not None:
            cmd += ["--manifest", str(manifest)]
        log(f"building {out.name} (a few minutes the first time) ...")
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, MPBUILD_DIR=str(work), STANFLEET_VERSION=version))
        if r.returncode != 0:
            raise RuntimeError(f"build-unix.sh failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        os.replace(str(out) + ".tmp", out)
    return out
