"""/healthz, /readyz and Prometheus /metrics over HTTP.

/healthz answers 200 while the process's event loop runs (a supervisor
restarts it otherwise); /readyz answers 200 only while the service can do its
job (connected, database reachable) and 503 with the reason otherwise, so a
load balancer or an operator sees why. A service with its own aiohttp app
(the artifact server) adds the routes to it; the others run `OpsServer`.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("stanfleet.ops")

# () -> "" when ready, else why not
ReadyCheck = Callable[[], str]


def add_routes(app: web.Application, registry: CollectorRegistry, ready: ReadyCheck) -> None:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        why = ready()
        if why:
            return web.Response(status=503, text=f"not ready: {why}\n")
        return web.Response(text="ready\n")

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class OpsServer:
    """The three endpoints on their own port (port 0: any free port)."""

    def __init__(self, registry: CollectorRegistry, ready: ReadyCheck,
                 host: str = "127.0.0.1", port: int = 0):
        self.registry, self.ready = registry, ready
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        add_routes(app, self.registry, self.ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("ops endpoints on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
