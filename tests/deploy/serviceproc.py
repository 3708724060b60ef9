"""A stanfleet service command run as a real process: its log lines as they
come, signals, and exit status. The tests wait for log lines (events), not time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

DEFAULT_TIMEOUT = 30.0


def stanfleet_exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "stanfleet")


class ServiceProcess:
    def __init__(self, *args: str):
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._new = asyncio.Condition()
        self._reader: asyncio.Task | None = None

    async def start(self) -> "ServiceProcess":
        self.proc = await asyncio.create_subprocess_exec(
            stanfleet_exe(), *self.args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            raw = await self.proc.stdout.readline()
            async with self._new:
                if raw:
                    self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._new.notify_all()
            if not raw:
                return

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    async def wait_for(self, text: str, timeout: float = DEFAULT_TIMEOUT, after: int = 0) -> str:
        """The first line (from index `after`) that contains `text`."""
        async def found() -> str:
            async with self._new:
                while True:
                    for line in self.lines[after:]:
                        if text in line:
                            return line
                    if self._reader.done():
                        raise AssertionError(f"exited without {text!r}:\n" + "\n".join(self.lines))
                    await self._new.wait()
        try:
            return await asyncio.wait_for(found(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {text!r} within {timeout}s:\n"
                                 + "\n".join(self.lines[-30:])) from None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return rc

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.wait()


async def run_once(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run a command to its end without blocking the event loop (servers the
    test runs in-process must keep serving meanwhile): (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        stanfleet_exe(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()
