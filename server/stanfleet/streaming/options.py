"""Streaming server options: the defaults, the configuration file, the flags.

Precedence is Go's: built-in defaults, then the `-sc` configuration file
(and the NATS settings of `-c`), then flags given on the command line. The
site's deployment config (`--site FILE`, site.py) comes before all but the
defaults: a site-wide file, overridden by anything more specific. The
flags themselves are in flags.py, the file's keys in config_file.py; this is
the only place options are decided.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from ..defaults import DEFAULT_CLUSTER_ID
from . import config_file
from .families import FamilyError, parse_patterns
from .flags import NOT_APPLICABLE, SQL_FLAGS, SQL_REFUSED, add_arguments
from .limits import (
    DEFAULT_MAX_CHANNELS,
    ChannelLimits,
    LimitsError,
    StoreLimits,
    parse_duration,
    parse_size,
)

__all__ = ["ServerOptions", "add_arguments", "from_args", "DEFAULT_STORE"]
from .quotas import DEFAULT_QUOTAS, QuotaError
from .quotas import parse as parse_quotas

DEFAULT_PORT = 4222
DEFAULT_HOST = "0.0.0.0"
DEFAULT_STORE = "memory"  # Go's default: a clean server each run; -store file persists
DEFAULT_HB_INTERVAL = 30.0
DEFAULT_HB_TIMEOUT = 10.0
DEFAULT_HB_FAIL_COUNT = 10
DEFAULT_DUP_CHECK_TIMEOUT = 0.5  # liveness check of a clientID that connects twice
DEFAULT_PUB_ACK_TIMEOUT = 30.0  # give up on a JetStream store and answer with an error
DEFAULT_DIR = "stanfleet-data"
DEFAULT_CLUSTER_REPLICAS = 3  # --clustered without --cluster_peers
DEFAULT_FT_LEASE = 2.0  # --ft_lease: a standby takes over this long after the last renewal
MIN_FT_LEASE = 0.5
MAX_REPLICAS = 5  # JetStream's limit
ENCRYPTION_KEY_ENV = "NATS_STREAMING_ENCRYPTION_KEY"
CIPHERS = {"aes": "aes", "chacha": "chachapoly", "chachapoly": "chachapoly"}


@dataclass
class ServerOptions:
    cluster_id: str = DEFAULT_CLUSTER_ID
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    monitor_port: int | None = None
    https_port: int | None = None  # monitoring over HTTPS (--tlscert's certificate)
    store: str = "file"  # file | memory; the command line's default is memory (DEFAULT_STORE)
    data_dir: str = DEFAULT_DIR
    nats_url: str | None = None  # None: embed a nats-server child
    nats_monitor_url: str | None = None  # with -ns: its monitoring, for /varz & co.
    replicas: int = 1
    hb_interval: float = DEFAULT_HB_INTERVAL
    hb_timeout: float = DEFAULT_HB_TIMEOUT
    hb_fail_count: int = DEFAULT_HB_FAIL_COUNT
    dup_check_timeout: float = DEFAULT_DUP_CHECK_TIMEOUT
    pub_ack_timeout: float = DEFAULT_PUB_ACK_TIMEOUT
    user: str | None = None
    password: str | None = None
    token: str | None = None
    debug: bool = False
    trace: bool = False
    limits: StoreLimits = field(default_factory=StoreLimits)
    tls_cert: str | None = None  # embedded nats-server's certificate (PEM)
    tls_key: str | None = None
    tls_verify: bool = False  # embedded nats-server verifies client certificates
    tls_client_ca: str | None = None  # ...against this CA (--tlscacert)
    tls_ca: str | None = None  # CA that signed the NATS server's certificate
    tls_client_cert: str | None = None  # our own certificate towards NATS
    tls_client_key: str | None = None
    secure: bool = False  # TLS towards NATS without verifying it
    authz: bool = False  # every request must carry Nats-Request-Info and pass authz.py
    accounts_file: str | None = None  # embedded nats-server: accounts and users (creds.py)
    broker_pid_file: str | None = None  # embedded nats-server's pid, for reloads
    # Go's flags that shape the embedded nats-server or the process.
    nats_config: str | None = None  # -c: included into the embedded nats-server's config
    nats_settings: dict = field(default_factory=dict)  # NATS keys of the -sc file
    routes: list[str] = field(default_factory=list)
    cluster_url: str | None = None
    cluster_name: str | None = None
    nats_debug: bool = False
    nats_trace: bool = False
    log_file: str | None = None
    logtime: bool = True
    syslog: bool = False
    remote_syslog: str | None = None
    pid_file: str | None = None
    encrypt: bool = False
    encryption_cipher: str = "aes"
    encryption_key: str | None = None
    file_sync: bool = False
    replace_durable: bool = False
    # Channel patterns sharing one JetStream stream each (families.py); none by
    # default, so every channel has a stream of its own as with the Go server.
    channel_families: list = field(default_factory=list)
    # Fault tolerance and clustering (FT behaviour: issue 14b's ft module).
    ft_group: str | None = None
    ft_lease: float = DEFAULT_FT_LEASE  # seconds the active's lease lasts unrenewed (ft.py)
    clustered: bool = False
    cluster_node_id: str | None = None
    cluster_peers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # flags that do nothing here, and why
    security_dir: str | None = None  # creds store: revocations end sessions (revocation.py)
    # Per-identity quotas (quotas.py), applied when authz is on; None: none.
    quotas: dict | None = field(default_factory=lambda: dict(DEFAULT_QUOTAS))
    log_format: str = "text"  # text | json lines (--site's log.format)
    log_level: str | None = None  # --site's log.level; None: info, or debug with -SD/-SV


def _split(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _merged(args: argparse.Namespace) -> tuple[dict, dict, dict, dict]:
    """Flag values over the configuration files' values: (settings, limits doc,
    NATS keys, quotas doc)."""
    settings: dict = {}
    limits_doc: dict = {}
    nats_keys: dict = {}
    quotas_doc: dict = {}
    if getattr(args, "site_config", None):
        from . import site

        settings, quotas_doc = site.settings(args.site_config)
    if getattr(args, "nats_config", None):
        settings.update(config_file.nats_file_settings(args.nats_config))
    if getattr(args, "stan_config", None):
        parsed = config_file.load(args.stan_config)
        settings.update(parsed.settings)
        limits_doc = parsed.limits
        nats_keys = parsed.nats
        quotas_doc = parsed.quotas or quotas_doc
    for name, value in vars(args).items():
        if value is not None and not name.startswith("_"):
            settings[name] = value
    return settings, limits_doc, nats_keys, quotas_doc


def _duration(settings: dict, name: str, default: float) -> float:
    value = settings.get(name)
    if value is None:
        return default
    try:
        return parse_duration(value)
    except LimitsError as e:
        raise ValueError(f"{name}: {e}") from None


def _size(value) -> int:
    try:
        return parse_size(value)
    except LimitsError as e:
        raise ValueError(str(e)) from None


def from_args(args: argparse.Namespace) -> ServerOptions:
    s, limits_doc, nats_keys, quotas_doc = _merged(args)
    get = s.get
    for name in SQL_FLAGS:
        if get(name) is not None:
            raise ValueError(SQL_REFUSED)
    store = str(get("store") or DEFAULT_STORE).lower()
    if store == "sql":
        raise ValueError(SQL_REFUSED)
    if store not in ("file", "memory"):
        raise ValueError(f"unknown store type {store!r}: MEMORY or FILE")
    flags = StoreLimits(
        max_channels=_int(get("max_channels"), DEFAULT_MAX_CHANNELS, "max_channels"),
        defaults=_channel_defaults(s))
    # A limit flag on the command line beats the file's server-wide value; the
    # file's per-channel overrides still apply on top of it.
    limits_doc = {k: v for k, v in limits_doc.items() if getattr(args, k, None) is None}
    try:
        limits = config_file.store_limits(limits_doc, flags, get("stan_config") or "")
    except LimitsError as e:
        raise ValueError(str(e)) from None
    tls_cert, tls_key = get("tls_cert"), get("tls_key")
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tlscert and --tlskey go together")
    if (get("tls") or get("tlsverify")) and not tls_cert:
        raise ValueError("--tls and --tlsverify need --tlscert and --tlskey")
    hb_fail_count = _int(get("hb_fail_count"), DEFAULT_HB_FAIL_COUNT, "hb_fail_count")
    if hb_fail_count < 1:
        raise ValueError("-hbf must be at least 1")
    peers = _split(get("cluster_peers"))
    clustered = bool(get("clustered"))
    default_replicas = 1
    if clustered:
        default_replicas = min(len(peers) + 1, MAX_REPLICAS) if peers else \
            DEFAULT_CLUSTER_REPLICAS
    replicas = _int(get("replicas"), default_replicas, "replicas")
    ft_lease = _duration(s, "ft_lease", DEFAULT_FT_LEASE)
    if ft_lease < MIN_FT_LEASE:
        raise ValueError(f"--ft_lease must be at least {MIN_FT_LEASE}s")
    if replicas < 1 or replicas > MAX_REPLICAS:
        raise ValueError(f"--replicas must be between 1 and {MAX_REPLICAS}")
    cipher = str(get("encryption_cipher") or "aes").lower()
    if cipher not in CIPHERS:
        raise ValueError(f"unknown encryption cipher {cipher!r}: AES or CHACHA")
    key = get("encryption_key") or os.environ.get(ENCRYPTION_KEY_ENV)
    if get("encrypt") and not key:
        raise ValueError(f"--encrypt needs --encryption_key or {ENCRYPTION_KEY_ENV}")
    if get("encrypt") and get("nats_url"):
        raise ValueError("with -ns, encryption at rest is the NATS server's setting: "
                         "jetstream { cipher: aes, key: ... } in its configuration")
    opts = ServerOptions(
        cluster_id=get("cluster_id") or DEFAULT_CLUSTER_ID,
        host=get("host") or DEFAULT_HOST,
        port=_int(get("port"), DEFAULT_PORT, "port"),
        monitor_port=get("monitor_port"),
        https_port=get("https_port"),
        store=store,
        data_dir=get("data_dir") or DEFAULT_DIR,
        nats_url=get("nats_url"),
        nats_monitor_url=get("nats_monitor_url"),
        replicas=replicas,
        hb_interval=_duration(s, "hb_interval", DEFAULT_HB_INTERVAL),
        hb_timeout=_duration(s, "hb_timeout", DEFAULT_HB_TIMEOUT),
        hb_fail_count=hb_fail_count,
        user=get("user"), password=get("password"), token=get("token"),
        debug=bool(get("stan_debug") or get("stan_debug_trace")),
        trace=bool(get("stan_trace") or get("stan_debug_trace")),
        limits=limits,
        tls_cert=tls_cert, tls_key=tls_key,
        tls_verify=bool(get("tlsverify")), tls_client_ca=get("tlscacert"),
        tls_ca=get("tls_ca"), tls_client_cert=get("tls_client_cert"),
        tls_client_key=get("tls_client_key"), secure=bool(get("secure")),
        authz=bool(get("authz")),
        nats_config=get("nats_config"), nats_settings=nats_keys,
        routes=_split(get("routes")), cluster_url=get("cluster_url"),
        cluster_name=get("cluster_name"),
        nats_debug=bool(get("nats_debug") or get("nats_debug_trace")),
        nats_trace=bool(get("nats_trace") or get("nats_debug_trace")),
        log_file=get("log_file"), logtime=get("logtime") is not False,
        syslog=bool(get("syslog")), remote_syslog=get("remote_syslog"),
        pid_file=get("pid_file"),
        encrypt=bool(get("encrypt")), encryption_cipher=CIPHERS[cipher], encryption_key=key,
        file_sync=bool(get("file_sync") or get("cluster_sync")),
        replace_durable=bool(get("replace_durable")),
        channel_families=_families(get("channel_families")),
        ft_group=get("ft_group"), ft_lease=ft_lease, clustered=clustered,
        cluster_node_id=get("cluster_node_id"), cluster_peers=peers,
        notes=[f"--{n}: {why}" for n, why in NOT_APPLICABLE.items() if get(n) is not None],
        quotas=None if get("no_quotas") else _quotas(quotas_doc, get("stan_config")
                                                     or get("site_config")),
        log_format=get("log_format") or "text", log_level=get("log_level"),
    )
    if get("security_dir"):
        for name, value in _security(get("security_dir"), opts).items():
            setattr(opts, name, value)
        opts.authz = True
    return opts


def _families(value) -> list[str]:
    try:
        return parse_patterns(_split(value))
    except FamilyError as e:
        raise ValueError(str(e)) from None


def _quotas(doc: dict, path: str | None) -> dict:
    try:
        return parse_quotas(doc, path or "quotas")
    except QuotaError as e:
        raise ValueError(str(e)) from None


def _int(value, default: int, name: str) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {value!r} is not an integer") from None


def _channel_defaults(s: dict) -> ChannelLimits:
    d = ChannelLimits()
    out = ChannelLimits(
        max_msgs=_int(s.get("max_msgs"), d.max_msgs, "max_msgs"),
        max_bytes=d.max_bytes if s.get("max_bytes") is None else _size(s["max_bytes"]),
        max_age=_duration(s, "max_age", d.max_age),
        max_subs=_int(s.get("max_subs"), d.max_subs, "max_subs"),
        max_inactivity=_duration(s, "max_inactivity", d.max_inactivity))
    for name in ("max_msgs", "max_bytes", "max_subs", "max_age", "max_inactivity"):
        if getattr(out, name) < 0:
            raise ValueError(f"--{name} must not be negative")
    return out


def _security(security_dir: str, opts: ServerOptions) -> dict:
    """Settings from the credentials store: our login, the broker's accounts, TLS."""
    from ..security.certs import CertPaths
    from ..security.creds import Store

    if opts.user or opts.token:
        raise ValueError("--security-dir brings its own login: leave out --user/--auth")
    store = Store(security_dir, cluster_id=opts.cluster_id)  # permissions name it
    certs = CertPaths(store.certs_dir)
    if not os.path.exists(certs.ca):
        raise ValueError(f"no certificates in {store.certs_dir}: run "
                         f"'stanfleet certs init --dir {store.certs_dir}' first")
    user, password = store.server_login()
    embedded = not opts.nats_url
    return {"user": user, "password": password, "tls_ca": opts.tls_ca or certs.ca,
            "tls_cert": opts.tls_cert or (certs.server if embedded else None),
            "tls_key": opts.tls_key or (certs.server_key if embedded else None),
            "security_dir": security_dir,
            "accounts_file": store.accounts_file if embedded else None,
            "broker_pid_file": store.pid_file if embedded else None}
