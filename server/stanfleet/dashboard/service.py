"""The dashboard service: one object that starts and stops all of it.

`stanfleet dashboard` runs it alone; `stanfleet up` runs it beside the other
parts (and tells it which devices the streaming server has connected).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from ..services.connection import secure_options
from ..services.settings import split_urls
from .actions import Actions
from .auth import Sessions, load_secret
from .fleetstate import FleetState
from .follower import DatabasePoller, StatusFollower
from .rollup import FleetRollup
from .store import FleetDB
from .web import DashboardApp

log = logging.getLogger("stanfleet.dashboard")
STOP_GRACE = 5.0  # seconds
WARM = 7 * 86400  # the fleet chart's longest range


@dataclass
class DashboardConfig:
    nats: str = "tls://127.0.0.1:4222"
    cluster_id: str = "test-cluster"
    # <security>: certs/ (TLS), creds.json (logins), services/{listener,operator}.json
    # (the dashboard's own sessions). None: no TLS, no login (development only).
    security_dir: str | None = "stanfleet-data/security"
    db: str = "stanfleet-data/fleet.db"
    releases: str = "stanfleet-data/releases"
    devices_dir: str | None = "stanfleet-data/devices"  # the simulator's device logs
    url_base: str = "https://127.0.0.1:8080"  # where devices download releases
    host: str = "127.0.0.1"
    port: int = 8443


class Dashboard:
    def __init__(self, config: DashboardConfig,
                 connected: Callable[[], set[str]] | None = None):
        self.config = config
        self.state = FleetState(connected)
        sec = config.security_dir
        self._read_opts = self._options("listener")
        urls = split_urls(config.nats)  # one URL, or a cluster's: nats-py tries each
        self.actions = Actions(urls, config.cluster_id, self._options("operator"),
                               config.db, config.releases, config.url_base)
        self.follower = StatusFollower(self.state, urls, config.cluster_id,
                                       self._read_opts, client_id=f"dashboard-{os.getpid()}")
        self.poller = DatabasePoller(self.state, config.db)
        self.sessions = Sessions(load_secret(sec)) if sec else None
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.rollup = FleetRollup()
        self.warmed: asyncio.Task | None = None
        self.port = config.port

    def _options(self, role: str) -> dict:
        sec = self.config.security_dir
        if not sec:
            return {}
        return secure_options(os.path.join(sec, "services", f"{role}.json"),
                              os.path.join(sec, "certs", "ca.pem"))

    def _warm(self) -> None:
        db = FleetDB(self.config.db)
        try:
            now = time.time()
            self.rollup.series(db.queries, now - WARM, now, now)
        except Exception as e:  # only a head start: the page computes it when asked
            log.warning("dashboard: fleet chart warm-up failed: %s", e)
        finally:
            db.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.config.security_dir else "http"
        return f"{scheme}://{self.config.host}:{self.port}/"

    async def start(self) -> None:
        c = self.config
        await asyncio.to_thread(lambda: FleetDB(c.db).close())  # tables exist before reads
        ssl_ctx = None
        if c.security_dir:
            from ..security.certs import CertPaths, server_context

            ssl_ctx = server_context(CertPaths(os.path.join(c.security_dir, "certs")))
        app = DashboardApp(self.state, self.actions, c.db, self.sessions, c.security_dir,
                           c.devices_dir, secure_cookie=ssl_ctx is not None,
                           rollup=self.rollup).app()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, c.host, c.port, ssl_context=ssl_ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._tasks = [asyncio.create_task(self.follower.run(self._stop)),
                       asyncio.create_task(self.poller.run(self._stop))]
        # The week's fleet buckets, computed now rather than at the first page view.
        self.warmed = asyncio.create_task(asyncio.to_thread(self._warm))
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        self._stop.set()
        # A first connect that never succeeds (no broker) does not see the stop
        # event: give the tasks a moment to end by themselves, then cancel.
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
            for t in late:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.warmed is not None:
            await asyncio.gather(self.warmed, return_exceptions=True)  # a thread: let it end
        await self.actions.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
