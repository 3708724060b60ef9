"""The artifact server: firmware bundles over HTTP for devices to download.

Only `GET`/`HEAD /releases/<version>.bin` exist; everything else is a 404.
Devices verify size and sha256 from the release message, so a damaged or
truncated download is caught on the device.
"""

from __future__ import annotations

import logging
import os
import re

from aiohttp import web

log = logging.getLogger("stanfleet.artifacts")
NAME = re.compile(r"^\d+\.\d+\.\d+\.bin$")


class ArtifactServer:
    def __init__(self, releases_dir: str, host: str = "0.0.0.0", port: int = 8080,
                 ssl_context=None):
        self.releases_dir = releases_dir
        self.host, self.port, self.ssl = host, port, ssl_context
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/releases/{name}", self._serve)
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
            raise web.HTTPNotFound(text=f"no artifact {name}\n")
        log.info("artifact %s requested by %s", name, request.remote)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
