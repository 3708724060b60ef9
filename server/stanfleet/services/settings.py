"""A service's settings: a flag given on the command line, else the deployment
config file (`--config`), else the default.

Flags whose value may come from the file default to None, so "given" is
"not None"; without --config the defaults are those of the demo fleet (the
security directory `stanfleet up` leaves, see commands.add_connection_arguments).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..defaults import DEFAULT_CLUSTER_ID
from ..ops import siteconfig
from ..ops.siteconfig import SiteConfig
from .connection import secure_options


def load(args: argparse.Namespace) -> SiteConfig | None:
    path = getattr(args, "config", None)
    return siteconfig.load(path) if path else None


def pick(flag, from_file, default):
    """The first of flag, file value, default that is not None."""
    if flag is not None:
        return flag
    return from_file if from_file is not None else default


@dataclass
class Connection:
    urls: list[str]
    cluster_id: str
    ca: str | None
    creds: str | None

    def nats_options(self) -> dict:
        return secure_options(self.creds, self.ca)

    @property
    def where(self) -> str:
        return ",".join(self.urls)


def split_urls(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def connection(args: argparse.Namespace, role: str, cfg: SiteConfig | None) -> Connection:
    fallback = getattr(args, "_connection_fallbacks", {})
    nats = cfg.nats if cfg else None
    urls = pick(split_urls(args.nats) if args.nats else None,
                nats.urls if nats else None, [fallback.get("nats", siteconfig.DEFAULT_NATS_URL)])
    return Connection(
        urls=list(urls),
        cluster_id=pick(args.cluster_id, nats.cluster_id if nats else None,
                        DEFAULT_CLUSTER_ID),
        # with a config file, its TLS and credentials settings are the whole story
        ca=pick(args.ca, nats.ca if nats else None, None if cfg else fallback.get("ca")),
        creds=pick(args.creds, nats.creds.get(role) if nats else None,
                   None if cfg else fallback.get("creds")))


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="deployment config file (TOML, see deploy/stanfleet.toml); "
                        "flags given here win over it")


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=siteconfig.LOG_FORMATS, default=None,
                   help="text or json lines (default: log.format, else text)")
    p.add_argument("--log-level", choices=siteconfig.LOG_LEVELS, default=None,
                   help="default: log.level, else info")


def log_settings(args: argparse.Namespace, cfg: SiteConfig | None) -> tuple[str, str]:
    return (pick(args.log_format, cfg.log.format if cfg else None, siteconfig.DEFAULT_LOG_FORMAT),
            pick(args.log_level, cfg.log.level if cfg else None, siteconfig.DEFAULT_LOG_LEVEL))
