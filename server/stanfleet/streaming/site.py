"""`--site FILE`: the streaming server's settings from the site's deployment
config (ops/siteconfig.py, the TOML file every other service reads with
`--config`). `-c/--config` stays the Go server's NATS configuration file, so
the site file has a flag of its own.

Only keys written in the file are taken; the `-sc` file and command-line
flags win over them (options.py decides the order).
"""

from __future__ import annotations

from ..ops import siteconfig
from ..security.credfile import load_credentials

CREDS_ROLE = siteconfig.STREAMING_CREDS_ROLE  # nats.creds.<this>: the server's own NATS login

# "section.key" in the TOML -> the option name options.from_args reads
_KEYS = {
    "nats.cluster_id": "cluster_id",
    "nats.ca": "tls_ca",
    "streaming.store": "store",
    "streaming.dir": "data_dir",
    "streaming.ft_group": "ft_group",
    "streaming.replicas": "replicas",
    "streaming.monitor_port": "monitor_port",
    "streaming.channel_families": "channel_families",
    "log.format": "log_format",
    "log.level": "log_level",
}


def settings(path: str) -> tuple[dict, dict]:
    """(option settings, quotas document) from the site file at `path`;
    ConfigError (one line) if the file is missing or wrong."""
    cfg = siteconfig.load(path)
    out: dict = {}
    if "nats.urls" in cfg.given:
        out["nats_url"] = ",".join(cfg.nats.urls)
    for option, value in cfg.written(_KEYS).items():
        if value not in ("", 0) or option == "replicas":
            out[option] = value
    creds = cfg.nats.creds.get(CREDS_ROLE)
    if creds:
        out["user"], out["password"] = load_credentials(creds)
    return out, cfg.quotas
