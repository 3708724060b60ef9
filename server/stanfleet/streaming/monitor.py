"""Monitoring over HTTP (`-m PORT`): the original server's /streaming endpoints
and Prometheus metrics.

The JSON endpoints keep nats-streaming-server's field names, so dashboards and
scripts written for it keep working. Values come from live server state; the
message counts and sizes of channels come from JetStream, which holds them.

    /streaming/serverz     server identity, uptime and totals
    /streaming/storez      store type and limits
    /streaming/clientsz    clients (?client=ID, ?subs=1, ?offset=, ?limit=)
    /streaming/channelsz   channels (?channel=NAME, ?subs=1, ?offset=, ?limit=)
    /streaming/isFTActive  200 from the active server, 204 from an FT standby
    /metrics               Prometheus text format

An FT standby (--ft_group) has loaded no state: serverz says FT_STANDBY, the
other /streaming endpoints and /metrics answer 503 and point at the active
server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import platform
import resource
import time
from importlib import metadata

from aiohttp import web
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError
from nats.nuid import NUID
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import families
from .channels import consumers_of
from .nats_monitor import NatsMonitorForwarder

log = logging.getLogger("stanfleet.streaming.monitor")

DEFAULT_LIST_LIMIT = 1024  # the original's default page size
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
_NS = 1_000_000_000


class Monitor:
    """The HTTP monitoring server of one StreamingServer."""

    def __init__(self, server):
        self.server = server
        self.server_id = NUID().next().decode()
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(server))
        self.publish_latency = Histogram(
            "stan_publish_latency_seconds",
            "Time from receiving a PubMsg to JetStream confirming it is stored",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def on_stored(self, latency_seconds: float) -> None:
        self.publish_latency.observe(latency_seconds)

    async def start(self, host: str, port: int, ssl_context=None, guard=None) -> int:
        """Listen on host:port (0 = any free port), HTTPS with ``ssl_context``,
        every request through ``guard`` (monitor_auth.py) first; returns the bound port."""
        app = web.Application(middlewares=([guard] if guard else [])
                              + [_errors_as_json, self._standby])
        app.router.add_get("/streaming/serverz", self._serverz)
        app.router.add_get("/streaming/storez", self._storez)
        app.router.add_get("/streaming/clientsz", self._clientsz)
        app.router.add_get("/streaming/channelsz", self._channelsz)
        app.router.add_get("/streaming/isFTActive", self._ft_active)
        app.router.add_get("/metrics", self._metrics)
        NatsMonitorForwarder(self.server).add_routes(app)  # /varz, /connz, /subsz...
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _standby(self, request: web.Request, handler):
        # nats-server's own endpoints (/varz...) are forwarded: fine on a standby.
        ours = request.path.startswith("/streaming/") or request.path == "/metrics"
        if self.server.active or not ours or request.path == "/streaming/isFTActive":
            return await handler(request)
        if request.path == "/streaming/serverz":
            return _json({"cluster_id": self.server.opts.cluster_id,
                          "server_id": self.server_id, "version": _version(),
                          "state": "FT_STANDBY", "now": _timestamp(time.time())})
        raise _error(web.HTTPServiceUnavailable, "FT standby: ask the active server")

    # -- endpoints -------------------------------------------------------------

    async def _serverz(self, request: web.Request) -> web.Response:
        s = self.server
        msgs, size = await self._stored_totals()
        now = time.time()
        open_fds, max_fds = _fds()
        return _json({
            "cluster_id": s.opts.cluster_id, "server_id": self.server_id,
            "version": _version(), "go": f"python{platform.python_version()}",
            "state": "FT_ACTIVE" if s.ft else "STANDALONE", "now": _timestamp(now),
            "start_time": _timestamp(s.started),
            "uptime": uptime(now - s.started), "clients": len(s.clients.clients),
            "subscriptions": len(s.subs.members), "channels": len(s.channels.channels),
            "total_msgs": msgs, "total_bytes": size,
            "in_msgs": s.channels.msgs_in, "in_bytes": s.channels.bytes_in,
            "out_msgs": s.subs.msgs_out, "out_bytes": s.subs.bytes_out,
            "open_fds": open_fds, "max_fds": max_fds,
        })

    async def _storez(self, request: web.Request) -> web.Response:
        s = self.server
        msgs, size = await self._stored_totals()
        return _json({
            "cluster_id": s.opts.cluster_id, "server_id": self.server_id,
            "now": _timestamp(time.time()), "type": s.opts.store.upper(), "backend": "JetStream",
            "limits": _store_limits(s.opts.limits), "total_msgs": msgs, "total_bytes": size,
        })

    async def _clientsz(self, request: web.Request) -> web.Response:
        subs = _flag(request, "subs")
        wanted = request.query.get("client")
        clients = self.server.clients.clients
        if wanted:
            info = clients.get(wanted)
            if info is None:
                raise _error(web.HTTPNotFound, f"client {wanted!r} not found")
            return _json(self._client(info, subs))
        offset, limit = _paging(request)
        ids = sorted(clients)
        page = [self._client(clients[cid], subs) for cid in ids[offset:offset + limit]]
        return _json({**self._list_header(offset, limit, len(ids), len(page)), "clients": page})

    async def _channelsz(self, request: web.Request) -> web.Response:
        subs = _flag(request, "subs")
        wanted = request.query.get("channel")
        channels = self.server.channels.channels
        if wanted:
            ch = channels.get(wanted)
            if ch is None:
                raise _error(web.HTTPNotFound, f"channel {wanted!r} not found")
            return _json(await self._channel(ch, subs))
        offset, limit = _paging(request)
        names = sorted(channels)[offset:offset + limit]
        header = self._list_header(offset, limit, len(channels), len(names))
        if not subs:
            return _json({**header, "names": names})
        page = await asyncio.gather(*(self._channel(channels[n], True) for n in names
                                      if n in channels))
        header["count"] = len(page)
        return _json({**header, "channels": list(page)})

    async def _ft_active(self, request: web.Request) -> web.Response:
        # As the original: 200 from the active server (and from one outside an
        # FT group), 204 from a standby.
        return web.Response(status=200 if self.server.active else 204)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- building the documents -------------------------------------------------

    def _list_header(self, offset: int, limit: int, total: int, count: int) -> dict:
        return {"cluster_id": self.server.opts.cluster_id, "server_id": self.server_id,
                "now": _timestamp(time.time()), "offset": offset, "limit": limit,
                "count": count, "total": total}

    def _client(self, info, subs: bool) -> dict:
        out = {"id": info.client_id, "hb_inbox": info.hb_inbox}
        if subs:
            by_channel: dict[str, list] = {}
            manager = self.server.subs
            for sub_id in sorted(manager.by_client.get(info.client_id, ())):
                m = manager.members.get(sub_id)
                if m is not None:
                    by_channel.setdefault(m.channel, []).append(_member(m))
            out["subscriptions"] = by_channel
        return out

    async def _channel(self, ch, subs: bool) -> dict:
        out = {"name": ch.name, "msgs": 0, "bytes": 0, "first_seq": 0, "last_seq": 0}
        # Snapshot before awaiting: membership may change while JetStream answers.
        online = [m for g in self.server.subs.groups.values() if g.channel is ch
                  for m in g.members]
        active = {m.group.consumer for m in online}
        offline = []
        if ch.ready.done() and ch.ready.exception() is None:
            try:
                jsm = self.server.channels.jsm
                if ch.family is not None:
                    out.update(await families.channel_state(jsm, ch.stream, ch.store_subject))
                else:
                    st = (await jsm.stream_info(ch.stream)).state
                    out.update(msgs=st.messages, bytes=st.bytes, first_seq=st.first_seq,
                               last_seq=st.last_seq)
                if subs:
                    # A durable consumer no online group uses is an offline durable;
                    # on a family's stream, only those filtered on this channel.
                    offline = [c for c in await consumers_of(self.server.channels.jsm, ch.stream)
                               if c.config.durable_name and c.name not in active
                               and (ch.family is None
                                    or c.config.filter_subject == ch.store_subject)]
            except NotFoundError:
                pass  # deleted meanwhile (inactivity)
        if subs:
            out["subscriptions"] = [_member(m) for m in online] + [_offline(c) for c in offline]
        return out

    async def _stored_totals(self) -> tuple[int, int]:
        """Messages and bytes JetStream holds for all channels, from one stream listing."""
        streams = {ch.stream for ch in self.server.channels.channels.values()}
        jsm = self.server.channels.jsm
        msgs = size = offset = 0
        while True:
            it = await jsm.streams_info_iterator(offset=offset)
            batch = list(it)
            for info in batch:
                if info.config.name in streams:
                    msgs += info.state.messages
                    size += info.state.bytes
            offset += len(batch)
            if not batch or offset >= it.total:
                return msgs, size


class _StateCollector(Collector):
    """Reads the server's counters at scrape time: nothing to keep in step."""

    def __init__(self, server):
        self.server = server

    def collect(self):
        s = self.server
        for name, doc, value in (
                ("stan_in_msgs", "Messages published to the server", s.channels.msgs_in),
                ("stan_in_bytes", "Payload bytes published to the server", s.channels.bytes_in),
                ("stan_out_msgs", "Messages delivered to subscriptions", s.subs.msgs_out),
                ("stan_out_bytes", "Payload bytes delivered to subscriptions", s.subs.bytes_out),
                ("stan_redeliveries", "Messages delivered again after no ack",
                 s.subs.redeliveries)):
            yield CounterMetricFamily(name, doc, value=value)
        for name, doc, value in (
                ("stan_clients", "Connected clients", len(s.clients.clients)),
                ("stan_subscriptions", "Online subscriptions", len(s.subs.members)),
                ("stan_channels", "Channels", len(s.channels.channels))):
            yield GaugeMetricFamily(name, doc, value=value)


def _member(m) -> dict:
    pending = len(m.outstanding)
    return {"client_id": m.client_id, "inbox": m.inbox, "ack_inbox": m.ack_inbox,
            "durable_name": m.durable_name, "queue_name": m.queue, "is_durable": m.group.durable,
            "is_offline": False, "max_inflight": m.max_in_flight, "ack_wait": m.ack_wait,
            "last_sent": m.last_sent, "pending_count": pending,
            "is_stalled": pending >= m.max_in_flight}


def _offline(info) -> dict:
    """An offline durable: only its JetStream consumer remains, named by its metadata."""
    cfg = info.config
    meta = cfg.metadata or {}
    max_inflight = cfg.max_ack_pending or 0
    pending = info.num_ack_pending or 0
    return {"client_id": meta.get("stan_client_id", ""), "inbox": "", "ack_inbox": "",
            "durable_name": meta.get("stan_durable", cfg.durable_name),
            "queue_name": meta.get("stan_queue", ""), "is_durable": True, "is_offline": True,
            "max_inflight": max_inflight, "ack_wait": int(cfg.ack_wait or 0),
            "last_sent": info.delivered.stream_seq if info.delivered else 0,
            "pending_count": pending, "is_stalled": max_inflight > 0 and pending >= max_inflight}


def _channel_limits(lim) -> dict:
    # Durations in nanoseconds: how the original's Go time.Duration encodes.
    return {"max_msgs": lim.max_msgs, "max_bytes": lim.max_bytes,
            "max_age": int(lim.max_age * _NS), "max_subscriptions": lim.max_subs,
            "max_inactivity": int(lim.max_inactivity * _NS)}


def _store_limits(limits) -> dict:
    return {"max_channels": limits.max_channels, **_channel_limits(limits.defaults),
            "channels": {name: _channel_limits(lim)
                         for name, lim in sorted(limits.per_channel.items())}}


def uptime(seconds: float) -> str:
    """'3d4h5m6s', leaving out leading zero units, as the original prints it."""
    total = int(max(seconds, 0))
    parts = []
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        n, total = divmod(total, size)
        if n or parts:
            parts.append(f"{n}{unit}")
    return "".join(parts) + f"{total}s"


def _timestamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _fds() -> tuple[int, int]:
    try:
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs (macOS)
        open_fds = 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return open_fds, soft if soft != resource.RLIM_INFINITY else 0


def _version() -> str:
    try:
        return metadata.version("stanfleet")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- request parsing and responses ---------------------------------------------------


def _int_param(request: web.Request, name: str, default: int, minimum: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _error(web.HTTPBadRequest, f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise _error(web.HTTPBadRequest, f"{name} must be at least {minimum}, not {value}")
    return value


def _paging(request: web.Request) -> tuple[int, int]:
    return (_int_param(request, "offset", 0, 0),
            _int_param(request, "limit", DEFAULT_LIST_LIMIT, 1))


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "")
    if raw in ("", "0"):
        return False
    if raw == "1":
        return True
    raise _error(web.HTTPBadRequest, f"{name} must be 0 or 1, not {raw!r}")


def _json(doc: dict) -> web.Response:
    return web.Response(text=json.dumps(doc, indent=2), content_type="application/json")


def _error(cls, message: str) -> web.HTTPException:
    return cls(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def _errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (NatsError, asyncio.TimeoutError) as e:
        log.warning("monitor %s: JetStream unavailable: %s", request.path, e)
        raise _error(web.HTTPServiceUnavailable, f"JetStream unavailable: {e}") from None
    except Exception:
        log.exception("monitor %s failed", request.path)
        raise _error(web.HTTPInternalServerError, "internal error") from None
