"""NATS monitoring on the streaming server's `-m` port, as the Go server has it.

Go's nats-streaming-server embeds NATS, so one port serves both `/streaming/*`
and nats-server's `/varz`, `/connz`, `/subsz`... Ours forwards those paths,
with their query strings, to the monitoring port of the embedded nats-server
(started with a private random `-m`), or of the external NATS (`-ns`): its
`--nats_monitor` URL, by default port 8222 on the host of the first `-ns` URL.
Replies come back unchanged (status, content type, body).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, web

log = logging.getLogger("stanfleet.streaming.monitor")

NATS_ENDPOINTS = ("/varz", "/connz", "/subsz", "/subscriptionsz", "/routez", "/gatewayz",
                  "/leafz", "/accountz", "/accstatz", "/jsz", "/healthz", "/ipqueuesz",
                  "/raftz", "/expvarz", "/stacksz")
DEFAULT_EXTERNAL_MONITOR_PORT = 8222
DEFAULT_FORWARD_TIMEOUT = 10.0


def upstream_url(server) -> str | None:
    """Base URL of the NATS monitoring to forward to; None when there is none."""
    broker = server.broker
    if broker is not None:
        if not broker.monitor_port:
            return None
        host = broker.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{broker.monitor_port}"
    if server.opts.nats_monitor_url:
        return server.opts.nats_monitor_url.rstrip("/")
    first = (server.opts.nats_url or "").split(",")[0].strip()
    host = urlsplit(first if "://" in first else f"nats://{first}").hostname
    return f"http://{host}:{DEFAULT_EXTERNAL_MONITOR_PORT}" if host else None


class NatsMonitorForwarder:
    def __init__(self, server):
        self.server = server
        self._session: ClientSession | None = None

    def add_routes(self, app: web.Application) -> None:
        for path in NATS_ENDPOINTS:
            app.router.add_get(path, self._forward)
        app.on_cleanup.append(self._close)

    async def _forward(self, request: web.Request) -> web.Response:
        base = upstream_url(self.server)
        if base is None:
            raise web.HTTPNotFound(text="no NATS monitoring to forward to\n")
        if self._session is None:
            self._session = ClientSession(timeout=ClientTimeout(total=DEFAULT_FORWARD_TIMEOUT))
        url = base + request.path_qs
        try:
            async with self._session.get(url) as r:
                body = await r.read()
                return web.Response(body=body, status=r.status,
                                    content_type=r.content_type or "application/json")
        except (ClientError, OSError, TimeoutError) as e:
            log.warning("monitor %s: NATS monitoring at %s unavailable: %s", request.path, base, e)
            raise web.HTTPBadGateway(text=f"NATS monitoring at {base} unavailable: {e}\n")

    async def _close(self, app) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
