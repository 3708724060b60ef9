"""Drive peer.js (the official Node STAN client) from pytest.

A NodePeer is one `node peer.js` process: commands go to its stdin as JSON
lines, its events come back on stdout as JSON lines. `expect` waits (with a
timeout, never a sleep) for the next event that matches, keeping the others
for later calls, so tests can wait for events in any order.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_JS = HERE / "peer.js"
NODE_CLIENT = HERE / "node_modules" / "node-nats-streaming" / "package.json"
TIMEOUT = 15.0
MAX_LINE = 16 * 1024 * 1024  # one event carries a whole message, twice (text and base64)


def node_missing_reason() -> str:
    """Why the Node interop tests cannot run here, or '' if they can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not NODE_CLIENT.is_file():
        return (f"{NODE_CLIENT.parent} is missing: run `npm install` in {HERE} "
                "(.ci/setup does it when npm is available)")
    return ""


class PeerExited(AssertionError):
    """The peer's stdout ended before the awaited event came."""


class NodePeer:
    def __init__(self, proc: asyncio.subprocess.Process, client_id: str):
        self.proc = proc
        self.client_id = client_id
        self.events: list[dict] = []  # every event seen, in order
        self._unclaimed: list[dict] = []  # seen but not yet taken by expect()/take()
        self._waiters: list[asyncio.Future] = []
        self._eof = False
        self._stderr = bytearray()
        self._reader = asyncio.create_task(self._read_stdout())
        self._stderr_task = asyncio.create_task(self._drain_stderr())

    @classmethod
    async def start(cls, stan, client_id: str, *commands: dict, ping_interval_ms: int = 0,
                    ping_max_out: int = 0, url: str | None = None, creds: str | None = None,
                    ca: str | None = None) -> NodePeer:
        args = ["--url", url or stan.nats_url, "--cluster", stan.cluster_id,
                "--client", client_id]
        if creds:
            args += ["--creds", creds, "--ca", ca]
        if ping_interval_ms:
            args += ["--ping-interval", str(ping_interval_ms)]
        if ping_max_out:
            args += ["--ping-max-out", str(ping_max_out)]
        for cmd in commands:
            args += ["--do", json.dumps(cmd)]
        proc = await asyncio.create_subprocess_exec(
            "node", str(PEER_JS), *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(HERE),
            limit=MAX_LINE)
        return cls(proc, client_id)

    async def _read_stdout(self) -> None:
        """Pump events into _unclaimed; waiters are woken on each one and at EOF."""
        try:
            while line := await self.proc.stdout.readline():
                try:
                    e = json.loads(line)
                except ValueError:
                    e = {"event": "garbage", "line": line.decode(errors="replace")}
                self.events.append(e)
                self._unclaimed.append(e)
                self._wake()
        finally:
            self._eof = True
            self._wake()

    def _wake(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()

    async def _drain_stderr(self) -> None:
        while chunk := await self.proc.stderr.read(4096):
            self._stderr += chunk

    # -- commands ---------------------------------------------------------------

    async def send(self, op: str, **fields) -> None:
        self.proc.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        await self.proc.stdin.drain()

    async def publish(self, channel: str, data: str, *, id: str | None = None) -> dict:
        """Publish and wait for its PubAck event; returns it."""
        tag = id or f"{channel}:{data}"
        await self.send("publish", channel=channel, data=data, id=tag)
        return await self.expect("puback", id=tag)

    async def subscribe(self, sub: str, channel: str, **options) -> dict:
        """Subscribe and wait until the server answered; returns ready or sub_error."""
        await self.send("subscribe", sub=sub, channel=channel, **options)
        return await self.expect(("ready", "sub_error"), sub=sub)

    async def ack(self, sub: str, seq: int) -> None:
        await self.send("ack", sub=sub, seq=seq)
        await self.expect("acked", sub=sub, seq=seq)

    async def unsubscribe(self, sub: str) -> dict:
        await self.send("unsubscribe", sub=sub)
        return await self.expect(("unsubscribed", "sub_error"), sub=sub)

    async def close_sub(self, sub: str) -> dict:
        await self.send("close_sub", sub=sub)
        return await self.expect(("sub_closed", "sub_error"), sub=sub)

    async def close(self) -> dict:
        """Close the STAN connection; returns the 'closed' event."""
        await self.send("close")
        return await self.expect("closed")

    # -- events -----------------------------------------------------------------

    def take(self, event, **match) -> list[dict]:
        """Remove and return every event seen so far that matches (no waiting)."""
        names = (event,) if isinstance(event, str) else tuple(event)
        got = [e for e in self._unclaimed
               if e["event"] in names and all(e.get(k) == v for k, v in match.items())]
        self._unclaimed = [e for e in self._unclaimed if not any(e is g for g in got)]
        return got

    async def expect(self, event, timeout: float = TIMEOUT, **match) -> dict:
        """The next event named `event` (a name or a tuple of names) whose fields
        equal `match`. Other events stay available to later calls."""
        names = (event,) if isinstance(event, str) else tuple(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, e in enumerate(self._unclaimed):
                if e["event"] in names and all(e.get(k) == v for k, v in match.items()):
                    return self._unclaimed.pop(i)
            if self._eof:
                raise PeerExited(f"{self.client_id}: peer exited (rc={self.proc.returncode}) "
                                 f"before {names} {match}; unclaimed events: "
                                 f"{self._unclaimed}; stderr: {self.stderr()}")
            if not await wait_for_news([self], deadline - loop.time()):
                raise AssertionError(
                    f"{self.client_id}: no {names} {match} within {timeout}s; "
                    f"unclaimed events: {self._unclaimed}; stderr: {self.stderr()}")

    async def messages(self, sub: str, count: int, timeout: float = TIMEOUT) -> list[dict]:
        """The next `count` msg events of subscription `sub`."""
        return [await self.expect("msg", timeout=timeout, sub=sub) for _ in range(count)]

    def stderr(self) -> str:
        return self._stderr.decode(errors="replace").strip()

    # -- teardown ---------------------------------------------------------------

    async def stop(self) -> None:
        """End the process whatever its state (idempotent)."""
        if self.proc.returncode is None:
            self.proc.stdin.close()  # the peer closes its STAN connection and exits
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        await self._stderr_task


async def wait_for_news(peers: list[NodePeer], timeout: float) -> bool:
    """Wait until any of `peers` reports an event (or exits); False on timeout."""
    if timeout <= 0:
        return False
    news = asyncio.get_running_loop().create_future()
    for p in peers:
        if p._eof:
            return True
        p._waiters.append(news)
    try:
        await asyncio.wait_for(news, timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def take_messages(peers: list[NodePeer], sub: str, count: int,
                        timeout: float = TIMEOUT) -> list[list[dict]]:
    """The next `count` msg events of subscription `sub`, spread over `peers`
    (e.g. queue group members); one list per peer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got: list[list[dict]] = [[] for _ in peers]
    while True:
        for bucket, p in zip(got, peers, strict=True):
            bucket += p.take("msg", sub=sub)
        if sum(map(len, got)) >= count:
            return got
        if all(p._eof for p in peers) or not await wait_for_news(peers, deadline - loop.time()):
            raise AssertionError(f"only {sum(map(len, got))} of {count} messages on {sub!r} "
                                 f"within {timeout}s: {got}")
