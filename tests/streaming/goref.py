"""The Go reference nats-streaming-server, for differential tests.

Found at ../shared/reference/bin from the project root; tests that need it
skip, saying why, when it is absent. Never a dependency of the product.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GO_BINARY = ROOT.parent / "shared" / "reference" / "bin" / "nats-streaming-server"
GO_READY_LINE = "Streaming Server is ready"
DEFAULT_START_TIMEOUT = 30.0


def require_go() -> str:
    if not GO_BINARY.exists():
        pytest.skip(f"Go reference nats-streaming-server not found at {GO_BINARY}")
    return str(GO_BINARY)


class GoServer:
    """The reference binary as a process; start() returns once it says it is ready."""

    def __init__(self, *args: str):
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    async def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> "GoServer":
        self.proc = await asyncio.create_subprocess_exec(
            require_go(), *self.args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        await asyncio.wait_for(ready, timeout)
        return self

    async def _read(self, ready: asyncio.Future) -> None:
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if GO_READY_LINE in line and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(AssertionError("Go server exited:\n" + "\n".join(self.lines)))

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
            await self._reader
