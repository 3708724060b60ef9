"""The deployment config file: one TOML file describes a site for every service.

It is the one documented way to configure a deployed service
(`deploy/stanfleet.toml` is the commented example, docs/deploy.md the guide).
Every service command takes `--config FILE`; a flag given on the command line
wins over the file. The file is read here and nowhere else, then passed down.

Relative paths in the file are relative to the file's folder, so a site's
config can sit next to its certificates.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from ..defaults import DEFAULT_CLUSTER_ID
from ..errors import CommandError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "stanfleet-data/fleet.db"
DEFAULT_ARTIFACTS_DIR = "stanfleet-data/releases"
DEFAULT_ARTIFACTS_PORT = 8080
DEFAULT_LISTENER_OPS_PORT = 9102
STREAMING_CREDS_ROLE = "streaming-server"  # nats.creds.<this>: the streaming server's login
DEFAULT_LOG_FORMAT = "text"
DEFAULT_LOG_LEVEL = "info"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(CommandError):
    """The deployment config file is missing, unreadable or wrong; the message names the key."""


@dataclass
class NatsSettings:
    urls: list[str] = field(default_factory=lambda: [DEFAULT_NATS_URL])
    cluster_id: str = DEFAULT_CLUSTER_ID
    ca: str | None = None  # CA (PEM) the NATS servers' certificates are checked against
    creds: dict[str, str] = field(default_factory=dict)  # role -> credentials file


@dataclass
class DatabaseSettings:
    url: str = DEFAULT_DATABASE_URL  # a SQLite file, or postgresql://user@host/db
    retention_days: float = 0  # 0: keep readings forever


@dataclass
class ArtifactsSettings:
    dir: str = DEFAULT_ARTIFACTS_DIR
    base_url: str = ""  # where devices download from, e.g. https://fleet.example:8080
    host: str = "0.0.0.0"
    port: int = DEFAULT_ARTIFACTS_PORT
    tls_cert: str | None = None  # both set: HTTPS
    tls_key: str | None = None


@dataclass
class ListenerSettings:
    name: str = "1"  # instance name: clientID listener-<name>; unique per instance
    ops_host: str = "127.0.0.1"
    ops_port: int = DEFAULT_LISTENER_OPS_PORT  # /healthz, /readyz, /metrics


@dataclass
class StreamingSettings:
    """The streaming server's own keys (`stanfleet streaming-server --site FILE`);
    its NATS URLs, cluster ID and CA come from [nats], its login from
    nats.creds.streaming-server (a JSON file with user and password)."""

    store: str = "file"  # file | memory
    dir: str = "stanfleet-data"  # FILE store: the embedded nats-server's JetStream folder
    ft_group: str = ""  # the fault-tolerance group; "" for none
    replicas: int = 1  # JetStream replicas per channel: 3 on a 3-node cluster
    monitor_port: int = 0  # -m: /streaming/*, /metrics; 0 for none
    # --channel_families: channel patterns sharing one JetStream stream each
    channel_families: list[str] = field(default_factory=list)


@dataclass
class LogSettings:
    format: str = DEFAULT_LOG_FORMAT  # text | json (one JSON object per line)
    level: str = DEFAULT_LOG_LEVEL


@dataclass
class SiteConfig:
    path: str | None = None
    nats: NatsSettings = field(default_factory=NatsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    artifacts: ArtifactsSettings = field(default_factory=ArtifactsSettings)
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    streaming: StreamingSettings = field(default_factory=StreamingSettings)
    log: LogSettings = field(default_factory=LogSettings)
    quotas: dict = field(default_factory=dict)  # the streaming server's per-identity quotas
    dashboard: dict = field(default_factory=dict)  # [dashboard], as written: the dashboard checks it
    given: set[str] = field(default_factory=set)  # "section.key" written in the file

    def written(self, keys: dict[str, str]) -> dict:
        """{name: value} for each "section.key" in `keys` that the file wrote
        (a default the file left alone does not override a command's own)."""
        out = {}
        for key, name in keys.items():
            if key in self.given:
                section, attr = key.split(".")
                out[name] = getattr(getattr(self, section), attr)
        return out

    def files(self) -> list[tuple[str, str]]:
        """(key, path) of every file the config names: each must exist."""
        out = [("nats.ca", self.nats.ca)] if self.nats.ca else []
        out += [(f"nats.creds.{role}", path) for role, path in sorted(self.nats.creds.items())]
        out += [(f"artifacts.{k}", getattr(self.artifacts, k))
                for k in ("tls_cert", "tls_key") if getattr(self.artifacts, k)]
        return out


# section -> (dataclass, {key: type}); the file may hold only these.
_SECTIONS = {
    "nats": (NatsSettings, {"urls": list, "cluster_id": str, "ca": str, "creds": dict}),
    "database": (DatabaseSettings, {"url": str, "retention_days": (int, float)}),
    "artifacts": (ArtifactsSettings, {"dir": str, "base_url": str, "host": str, "port": int,
                                      "tls_cert": str, "tls_key": str}),
    "listener": (ListenerSettings, {"name": str, "ops_host": str, "ops_port": int}),
    "streaming": (StreamingSettings, {"store": str, "dir": str, "ft_group": str,
                                      "replicas": int, "monitor_port": int,
                                      "channel_families": list}),
    "log": (LogSettings, {"format": str, "level": str}),
}
_PATH_KEYS = {("nats", "ca"), ("artifacts", "dir"), ("artifacts", "tls_cert"),
              ("artifacts", "tls_key"), ("streaming", "dir")}
_RAW_SECTIONS = ("quotas", "dashboard")
STORES = ("file", "memory")


def load(path: str) -> SiteConfig:
    """Read and check the file; a ConfigError names the file and the key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return parse(doc, path)


def parse(doc: dict, path: str = "<config>") -> SiteConfig:
    cfg = SiteConfig(path=path)
    base = os.path.dirname(os.path.abspath(path)) if path != "<config>" else os.getcwd()
    for name, value in doc.items():
        if name in _RAW_SECTIONS:  # their owners check them
            setattr(cfg, name, _table(path, name, value))
            continue
        if name not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}] "
                              f"(known: {', '.join(sorted([*_SECTIONS, *_RAW_SECTIONS]))})")
        kind, keys = _SECTIONS[name]
        section = getattr(cfg, name)
        for key, v in _table(path, name, value).items():
            if key not in keys:
                raise ConfigError(f"{path}: unknown key {name}.{key} "
                                  f"(known: {', '.join(sorted(keys))})")
            if not isinstance(v, keys[key]) or isinstance(v, bool):
                raise ConfigError(f"{path}: {name}.{key} has the wrong type ({type(v).__name__})")
            if (name, key) in _PATH_KEYS:
                v = os.path.join(base, v)
            setattr(section, key, v)
            cfg.given.add(f"{name}.{key}")
    _check(cfg, path, base)
    return cfg


def _table(path: str, name: str, value) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {name} must be a section ([{name}])")
    return value


def _check(cfg: SiteConfig, path: str, base: str) -> None:
    if not cfg.nats.urls or not all(isinstance(u, str) and "://" in u for u in cfg.nats.urls):
        raise ConfigError(f"{path}: nats.urls must list URLs such as \"tls://n1:4222\"")
    creds = {}
    for role, file in cfg.nats.creds.items():
        if not isinstance(file, str):
            raise ConfigError(f"{path}: nats.creds.{role} must be a file name")
        creds[role] = os.path.join(base, file)
    cfg.nats.creds = creds
    if cfg.log.format not in LOG_FORMATS:
        raise ConfigError(f"{path}: log.format must be one of {', '.join(LOG_FORMATS)}")
    if cfg.log.level not in LOG_LEVELS:
        raise ConfigError(f"{path}: log.level must be one of {', '.join(LOG_LEVELS)}")
    if cfg.streaming.store not in STORES:
        raise ConfigError(f"{path}: streaming.store must be one of {', '.join(STORES)}")
    if not 1 <= cfg.streaming.replicas <= 5:
        raise ConfigError(f"{path}: streaming.replicas must be between 1 and 5")
    if cfg.database.retention_days < 0:
        raise ConfigError(f"{path}: database.retention_days must be 0 (keep all) or more")
    url = cfg.database.url
    if "://" not in url:  # a SQLite file, relative to the config file
        cfg.database.url = os.path.join(base, url)
    elif not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        raise ConfigError(f"{path}: database.url must be a SQLite file, sqlite:///PATH "
                          f"or postgresql://...")
    if bool(cfg.artifacts.tls_cert) != bool(cfg.artifacts.tls_key):
        raise ConfigError(f"{path}: artifacts.tls_cert and artifacts.tls_key go together")
