"""A simulated device's network link: a TCP proxy to NATS that can be cut or stalled.

Every simulated device reaches NATS through its own proxy, so a test (or the
fleet runner) can take one device's WiFi away without touching the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Sequence
from urllib.parse import urlparse

log = logging.getLogger("stanfleet.fleet.proxy")

UPSTREAM_CONNECT_TIMEOUT = 5.0


class NetworkProxy:
    """A device's link to NATS: each connection from the device is forwarded to
    the first upstream that accepts, so a restarted broker (or another cluster
    node) is picked up by the device's next reconnect.

    States: ``up``; ``down`` (links reset, new connections accepted then reset,
    as a lost WiFi makes every connect fail); ``stalled`` (nothing moves in
    either direction but no connection ends, as on a link that drops packets:
    only the device's own timeouts notice; data in flight is delivered on restore).
    """

    def __init__(self, upstreams: Sequence[tuple[str, int]], host: str = "127.0.0.1"):
        if not upstreams:
            raise ValueError("a proxy needs at least one upstream")
        self.upstreams = list(upstreams)
        self.host = host
        self.port: int | None = None
        self.state = "up"
        self._closing = False
        self.refused = 0  # connections reset because the network was down
        self.on_change: Callable[[], None] | None = None  # after each link opens or ends
        self._server: asyncio.AbstractServer | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, scheme: str = "nats") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Open device connections (each has its upstream twin)."""
        return len(self._writers) // 2

    def cut(self, silent: bool = False) -> None:
        if silent:
            self.state = "stalled"
            self._flowing.clear()
            return
        self.state = "down"
        self._flowing.set()  # stalled pipes wake up, see the state and end
        self._abort_all()

    def restore(self) -> None:
        self.state = "up"
        self._flowing.set()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _abort_all(self) -> None:
        for w in list(self._writers):
            w.transport.abort()

    async def _accept(self, dr: asyncio.StreamReader, dw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        uw = None
        try:
            await self._flowing.wait()  # stalled: the device's connect gets no answer
            if self.state == "down":
                self.refused += 1
                return
            upstream = await self._connect_upstream()
            if upstream is None or self.state == "down":
                return
            ur, uw = upstream
            self._writers |= {dw, uw}
            self._changed()
            await asyncio.gather(self._pipe(dr, uw), self._pipe(ur, dw))
        except asyncio.CancelledError:
            # Only close() cancels a link; asyncio's server would log the
            # cancellation of its handler as an error.
            if not self._closing:
                raise
        finally:
            self._handlers.discard(task)
            for w in (dw, uw):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _connect_upstream(self):
        for host, port in self.upstreams:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port),
                                              UPSTREAM_CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                continue
        return None

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while self.state != "down":
                await self._flowing.wait()
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # stalled while reading: hold it until restored
                if self.state == "down":
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # NATS never half-closes: one side ending ends the link.
            dst.transport.abort()


def parse_upstreams(nats_url: str | Sequence[str]) -> tuple[str, list[tuple[str, int]]]:
    """(scheme, [(host, port), ...]) of one URL, a comma-separated list or a list."""
    urls = [nats_url] if isinstance(nats_url, str) else list(nats_url)
    scheme, out = "nats", []
    for raw in (u for item in urls for u in item.split(",") if u.strip()):
        u = urlparse(raw.strip() if "://" in raw else f"nats://{raw.strip()}")
        if not u.hostname:
            raise ValueError(f"not a NATS URL: {raw!r}")
        scheme = u.scheme or "nats"
        out.append((u.hostname, u.port or 4222))
    return scheme, out
