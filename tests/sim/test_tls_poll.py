"""The simulator's TLS sockets (sim/tls_poll.py): an idle device sleeps on
its connection instead of polling it every millisecond, and loses no line
that mbedTLS already decrypted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from stanfleet.fleet.runner import SIM_DIR, micropython_binary
from stanfleet.security import certs

DRIVER = Path(__file__).resolve().parent / "drivers" / "tls_idle.py"
WINDOW = 1.0  # seconds of idling measured


def wakeups(pid: int) -> int:
    """Times the process went to sleep of its own accord (each poll that waited)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc status")


class LineServer:
    """TLS server: answers "hello" with three lines in one write (one TLS
    record), then sends each line put in `more`."""

    def __init__(self, tmp_path):
        paths = certs.init(str(tmp_path / "certs"), ["127.0.0.1"])
        self.ca_der = paths.ca_der
        self.ctx = certs.server_context(paths)
        self.more: asyncio.Queue[bytes] = asyncio.Queue()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer):
        assert await reader.readline() == b"hello\n"
        writer.write(b"a\nb\nc\n")
        await writer.drain()
        while True:
            writer.write(await self.more.get())
            await writer.drain()

    def close(self):
        self.server.close()


async def run_driver(tmp_path, *extra: str):
    server = LineServer(tmp_path)
    port = await server.start()
    proc = await asyncio.create_subprocess_exec(
        micropython_binary(), str(DRIVER), str(SIM_DIR), str(port), server.ca_der, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

    async def line() -> str:
        raw = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert raw, "the driver ended"
        return raw.decode().strip()
    return server, proc, line


async def idle_wakeups(proc) -> int:
    before = wakeups(proc.pid)
    await asyncio.sleep(WINDOW)  # the window measured, not a wait for an event
    return wakeups(proc.pid) - before


async def test_an_idle_tls_connection_sleeps_and_wakes_for_data(tmp_path):
    server, proc, line = await run_driver(tmp_path)
    try:
        # Three lines of one record: the last two were decrypted with the
        # first, and must not wait for more data from the network.
        assert [await line() for _ in range(3)] == ["GOT a", "GOT b", "GOT c"]
        idle = await idle_wakeups(proc)
        server.more.put_nowait(b"d\n")
        assert await line() == "GOT d"  # a descriptor that sleeps still wakes for data
        server.more.put_nowait(b"e\nf\n")
        assert [await line() for _ in range(2)] == ["GOT e", "GOT f"]
    finally:
        proc.kill()
        await proc.wait()
        server.close()
    # Polling every millisecond would be about 1,000 a second.
    assert idle < 50 * WINDOW, f"{idle} wakeups in {WINDOW} s of idling"


async def test_the_ports_own_tls_socket_is_polled_every_millisecond(tmp_path):
    """What tls_poll is for: without it the same idle connection spins. (If a
    MicroPython release fixes its poll, this fails and tls_poll can go.)"""
    server, proc, line = await run_driver(tmp_path, "plain")
    try:
        assert [await line() for _ in range(3)] == ["GOT a", "GOT b", "GOT c"]
        idle = await idle_wakeups(proc)
    finally:
        proc.kill()
        await proc.wait()
        server.close()
    assert idle > 200 * WINDOW, f"only {idle} wakeups in {WINDOW} s"
