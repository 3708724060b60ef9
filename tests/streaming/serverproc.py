"""Run `stanfleet streaming-server` as a real process, for crash and signal tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

READY_LINE = "streaming server ready"


def free_port() -> int:
    """An ephemeral port for a server that must come back on the same port after a restart."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, log_path: str | None = None, cwd: str | None = None,
                 ready_line: str = READY_LINE):
        self.args = args
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.log_path = log_path
        self.ready_line = ready_line  # e.g. an FT standby's "standing by"
        self._reader: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._line = asyncio.Event()  # set at every new line

    @classmethod
    def on_broker(cls, nats_url: str, tmp_path) -> "ServerProcess":
        """A file-store server on an external nats-server, which outlives its kills."""
        return cls("-ns", nats_url, "-store", "file", "-dir", str(tmp_path / "d"),
                   log_path=str(tmp_path / "server.log"))

    async def launch(self) -> "ServerProcess":
        """Exec the server and read its output; not waiting for it to be ready."""
        exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
        self._ready = asyncio.Event()
        self.proc = await asyncio.create_subprocess_exec(
            exe, "streaming-server", *self.args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, cwd=self.cwd)
        self._reader = asyncio.create_task(self._read(self.proc))
        return self

    async def start(self, timeout: float = 30) -> "ServerProcess":
        await self.launch()
        done = asyncio.create_task(self.proc.wait())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({done, ready}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            raise AssertionError("server did not start:\n" + "\n".join(self.lines[-30:]))
        done.cancel()
        return self

    async def _read(self, proc) -> None:
        log = open(self.log_path, "a") if self.log_path else None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if log:
                log.write(line + "\n")
                log.flush()
            if self.ready_line in line:
                self._ready.set()
            self._line.set()
        if log:
            log.close()

    async def wait_line(self, text: str, timeout: float = 30, start: int = 0) -> str:
        """The first line from index `start` on that contains text; waits for it."""
        async def seek() -> str:
            i = start
            while True:
                while i < len(self.lines):
                    if text in self.lines[i]:
                        return self.lines[i]
                    i += 1
                self._line.clear()
                await self._line.wait()
        try:
            return await asyncio.wait_for(seek(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no line with {text!r} within {timeout}s:\n"
                                 + "\n".join(self.lines[-30:])) from None

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = await self.proc.wait()
        await self._reader
        return rc

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            await self.terminate()
