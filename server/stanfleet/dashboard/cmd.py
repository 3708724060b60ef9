"""`stanfleet dashboard`: the fleet in a browser.

Configuration: flags, or `--config FILE`, a TOML file whose `[dashboard]`
table takes the same names as the flags (nats, cluster_id, security_dir, db,
releases, devices_dir, url_base, host, port); a flag given on the command
line wins over the file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from ..errors import CommandError
from ..signals import stop_event
from .service import Dashboard, DashboardConfig

DEFAULTS = DashboardConfig()


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file with a [dashboard] table")
    p.add_argument("--nats", help=f"NATS URL (default: {DEFAULTS.nats})")
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
        import tomllib

        try:
            with open(args.config, "rb") as f:
                table = tomllib.load(f).get("dashboard", {})
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CommandError(f"{args.config}: {e}") from None
        names = {f.name for f in dataclasses.fields(DashboardConfig)}
        unknown = sorted(set(table) - names)
        if unknown:
            raise CommandError(f"{args.config}: unknown [dashboard] keys: {', '.join(unknown)}")
        values.update(table)
    for f in dataclasses.fields(DashboardConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    if args.insecure:
        values["security_dir"] = None
    return DashboardConfig(**values)


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
