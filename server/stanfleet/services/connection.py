"""Opening a STAN session for a command or a service."""

from __future__ import annotations

import asyncio
import logging

import nats

from ..client import Client
from ..client.errors import StanError
from ..errors import CommandError

log = logging.getLogger("stanfleet.connection")


async def _log_nats_error(e: Exception) -> None:
    # nats-py's default prints a traceback per failed attempt; one line is enough.
    log.debug("nats: %s", e)


async def open_session(nats_url: str, cluster_id: str, client_id: str, *,
                       once: bool = False, conn_lost_cb=None,
                       **nats_options) -> tuple[Client, object]:
    """Connect to NATS and start a STAN session.

    once=True (commands): fail fast with a CommandError; otherwise (services)
    the NATS connection keeps reconnecting for as long as it lives."""
    opts = dict(error_cb=_log_nats_error, **nats_options)
    if once:
        # nats-py retries even a first connect max_reconnect_attempts times.
        opts.update(connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=1)
    else:
        opts.update(max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    try:
        nc = await nats.connect(nats_url, **opts)
    except (OSError, nats.errors.Error, asyncio.TimeoutError) as e:
        if once:
            raise CommandError(f"cannot reach NATS at {nats_url}: {e}") from None
        raise
    sc = Client()
    try:
        await sc.connect(cluster_id, client_id, nats=nc, conn_lost_cb=conn_lost_cb)
    except (StanError, asyncio.TimeoutError) as e:
        await nc.close()
        if once:
            raise CommandError(f"no streaming server for cluster {cluster_id!r} at "
                               f"{nats_url}: {e}") from None
        raise
    return sc, nc
