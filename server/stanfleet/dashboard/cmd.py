"""`stanfleet dashboard`: the fleet in a browser.

Configuration: flags, or `--config FILE`, the site's deployment config (the
TOML file every service reads, ops/siteconfig.py). The dashboard takes the
shared keys from it (nats.urls, nats.cluster_id, database.url,
artifacts.dir, artifacts.base_url) and its own from a `[dashboard]` table
with the flags' names (nats, cluster_id, security_dir, db, releases,
devices_dir, url_base, host, port), which wins over the shared keys; a flag
given on the command line wins over both.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from ..errors import CommandError
from ..ops import siteconfig
from ..signals import stop_event
from .service import Dashboard, DashboardConfig

DEFAULTS = DashboardConfig()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="the site's deployment config (TOML, deploy/stanfleet.toml): [nats], "
                        "[database], [artifacts] and a [dashboard] table; flags win over it")
    p.add_argument("--nats", help=f"NATS URL, or a cluster's, comma-separated "
                   f"(default: {DEFAULTS.nats})")
    p.add_argument("--cluster-id", help=f"STAN cluster ID (default: {DEFAULTS.cluster_id})")
    p.add_argument("--security-dir",
                   help="CA, server certificate, logins and the dashboard's credentials "
                        f"(default: {DEFAULTS.security_dir})")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS and no login: everyone may change everything (development only)")
    p.add_argument("--db", help=f"fleet database (default: {DEFAULTS.db})")
    p.add_argument("--releases", help=f"built bundles (default: {DEFAULTS.releases})")
    p.add_argument("--devices-dir",
                   help=f"simulated devices' logs (default: {DEFAULTS.devices_dir})")
    p.add_argument("--url-base", help="where devices download releases "
                   f"(default: {DEFAULTS.url_base})")
    p.add_argument("--host", help=f"address to listen on (default: {DEFAULTS.host})")
    p.add_argument("--port", type=int, help=f"HTTPS port (default: {DEFAULTS.port})")


def load_config(args: argparse.Namespace) -> DashboardConfig:
    values: dict = {}
    if args.config:
        values.update(_from_site(siteconfig.load(str(args.config))))
    for f in dataclasses.fields(DashboardConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    if args.insecure:
        values["security_dir"] = None
    return DashboardConfig(**values)


# site config key -> DashboardConfig field
_SHARED = {"nats.cluster_id": "cluster_id", "database.url": "db", "artifacts.dir": "releases",
           "artifacts.base_url": "url_base"}
_PATHS = ("security_dir", "db", "releases", "devices_dir")  # relative to the file's folder


def _from_site(cfg: siteconfig.SiteConfig) -> dict:
    values: dict = {}
    if "nats.urls" in cfg.given:
        values["nats"] = ",".join(cfg.nats.urls)
    values.update(cfg.written(_SHARED))
    names = {f.name for f in dataclasses.fields(DashboardConfig)}
    unknown = sorted(set(cfg.dashboard) - names)
    if unknown:
        raise CommandError(f"{cfg.path}: unknown [dashboard] keys: {', '.join(unknown)}")
    base = os.path.dirname(os.path.abspath(cfg.path))
    for name, value in cfg.dashboard.items():
        if name in _PATHS and isinstance(value, str) and "://" not in value:
            value = os.path.join(base, value)
        values[name] = value
    return values


def run(args: argparse.Namespace) -> int:
    config = load_config(args)

    async def serve() -> None:
        dashboard = Dashboard(config)
        await dashboard.start()
        print(f"dashboard: {dashboard.url}", flush=True)
        try:
            await stop_event().wait()
        finally:
            await dashboard.stop()

    asyncio.run(serve())
    return 0
