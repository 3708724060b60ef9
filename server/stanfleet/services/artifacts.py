"""The artifact server: firmware bundles over HTTP for devices to download.

Only `GET`/`HEAD /releases/<version>.bin` exist, beside the operator's
/healthz, /readyz (the releases folder is readable) and /metrics; everything
else is a 404. Devices verify size and sha256 from the release message, so a
damaged or truncated download is caught on the device.
"""

from __future__ import annotations

import logging
import os
import re

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from ..ops.endpoints import add_routes

log = logging.getLogger("stanfleet.artifacts")
NAME = re.compile(r"^\d+\.\d+\.\d+\.bin$")


class ArtifactServer:
    def __init__(self, releases_dir: str, host: str = "0.0.0.0", port: int = 8080,
                 ssl_context=None):
        self.releases_dir = releases_dir
        self.host, self.port, self.ssl = host, port, ssl_context
        self._runner: web.AppRunner | None = None
        self.registry = CollectorRegistry()
        self.downloads = Counter("stanfleet_artifacts_downloads", "artifacts served",
                                 registry=self.registry)
        self.not_found = Counter("stanfleet_artifacts_not_found", "requests for no artifact",
                                 registry=self.registry)

    def not_ready(self) -> str:
        """"" while the releases folder can be served from, else why not."""
        if not os.path.isdir(self.releases_dir) or not os.access(self.releases_dir, os.R_OK):
            return f"releases folder {self.releases_dir} is missing or unreadable"
        return ""

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/releases/{name}", self._serve)
        add_routes(app, self.registry, self.not_ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("artifact server on %s://%s:%d serving %s", "https" if self.ssl else "http",
                 self.host, self.port, self.releases_dir)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = os.path.join(self.releases_dir, name)
        if not NAME.match(name) or not os.path.isfile(path):
            self.not_found.inc()
            raise web.HTTPNotFound(text=f"no artifact {name}\n")
        self.downloads.inc()
        log.info("artifact %s requested by %s", name, request.remote)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
