"""`stanfleet listener`: the listener as a long-running, supervised service.

Settings come from flags, else the deployment config (`--config`), else the
demo fleet's defaults. It serves /healthz, /readyz and /metrics, stops
cleanly on SIGTERM (what was received is committed and acked first), and on
SIGHUP re-reads the config file for the log format and level and the
retention. A database or streaming server it cannot reach at start is a
one-line error and exit status 1; after that it reconnects on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from ..errors import CommandError
from ..ops import logs
from ..ops.endpoints import OpsServer
from ..ops.lifecycle import Lifecycle
from ..ops.siteconfig import DEFAULT_LISTENER_OPS_PORT
from . import settings
from .commands import DEFAULT_DB, add_connection_arguments
from .listener import Listener, ListenerConfig
from .preflight import reach_stan

log = logging.getLogger("stanfleet.listener")


def configure(p: argparse.ArgumentParser) -> None:
    settings.add_config_argument(p)
    add_connection_arguments(p, "listener", configurable=True)
    p.add_argument("--db", default=None,
                   help=f"SQLite file or postgresql:// URL (default: database.url, else {DEFAULT_DB})")
    p.add_argument("--name", default=None,
                   help="instance name; instances share the work (clientID listener-NAME; "
                        "default: listener.name, else 1)")
    p.add_argument("--retention-days", type=float, default=None, metavar="DAYS",
                   help="drop readings older than DAYS (default: database.retention_days, "
                        "else 0 = keep all)")
    p.add_argument("--ops-port", type=int, default=None, metavar="PORT",
                   help=f"/healthz, /readyz, /metrics on this port (0: any free port; default: "
                        f"listener.ops_port, else {DEFAULT_LISTENER_OPS_PORT})")
    settings.add_log_arguments(p)


def listener_config(args: argparse.Namespace, cfg) -> ListenerConfig:
    conn = settings.connection(args, "listener", cfg)
    return ListenerConfig(
        nats_url=conn.urls, cluster_id=conn.cluster_id,
        name=settings.pick(args.name, cfg.listener.name if cfg else None, "1"),
        db_path=settings.pick(args.db, cfg.database.url if cfg else None, DEFAULT_DB),
        nats_options=conn.nats_options(),
        retention_days=settings.pick(args.retention_days,
                                     cfg.database.retention_days if cfg else None, 0))


def run(args: argparse.Namespace) -> int:
    cfg = settings.load(args)
    logs.setup(*settings.log_settings(args, cfg))
    config = listener_config(args, cfg)
    return asyncio.run(serve(args, cfg, config))


async def serve(args: argparse.Namespace, cfg, config: ListenerConfig) -> int:
    lifecycle = Lifecycle()
    await reach_stan(config.nats_url, config.cluster_id, f"listener-{config.name}-check",
                     config.nats_options or {})
    listener = Listener(config)  # opens and migrates the database: StoreError if it cannot
    lifecycle.on_reload(lambda: _reload(args, listener))
    ops = OpsServer(listener.metrics.registry, listener.not_ready,
                    host=cfg.listener.ops_host if cfg else "127.0.0.1",
                    port=settings.pick(args.ops_port, cfg.listener.ops_port if cfg else None,
                                       DEFAULT_LISTENER_OPS_PORT))
    runner = asyncio.create_task(listener.run())
    try:
        try:
            await ops.start()
        except OSError as e:
            raise CommandError(f"cannot serve /healthz, /readyz, /metrics on {ops.host}:{ops.port} "
                               f"({e.strerror or e}); set --ops-port or listener.ops_port "
                               "(0: any free port)") from None
        stop = asyncio.create_task(lifecycle.stopping())
        await asyncio.wait([runner, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
    finally:
        await listener.stop()
        try:
            await runner  # ListenerFailed, if a task of it died: the traceback, exit 1
        finally:
            await ops.stop()
    log.info("stopped: %d readings saved, %d rejected", listener.saved, listener.rejected)
    return 0


def _reload(args: argparse.Namespace, listener: Listener) -> None:
    """SIGHUP: the log settings and the retention, from flags and the file as at start."""
    cfg = settings.load(args)
    logs.setup(*settings.log_settings(args, cfg))
    listener.config.retention_days = settings.pick(
        args.retention_days, cfg.database.retention_days if cfg else None, 0)
    log.info("retention_days=%g", listener.config.retention_days)
