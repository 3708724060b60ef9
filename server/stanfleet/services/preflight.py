"""Reaching a dependency once, at a service's start or in `stanfleet deploy
check`: a one-line CommandError when it is not there, rather than a service
that retries forever while its supervisor reports it running."""

from __future__ import annotations

from .connection import open_session


async def reach_stan(urls: list[str] | str, cluster_id: str, client_id: str,
                     nats_options: dict) -> str:
    """Open and close a STAN session; what answered, e.g. "nats-server 2.15.1 at ..."."""
    sc, nc = await open_session(urls, cluster_id, client_id, once=True, **nats_options)
    try:
        info = getattr(nc, "_server_info", {}) or {}
        where = nc.connected_url.netloc if nc.connected_url else "?"
        return (f"cluster {cluster_id!r} answered through nats-server "
                f"{info.get('version', '?')} at {where}")
    finally:
        await sc.close()
        await nc.close()
