"""Streaming server options and the command-line flags that set them.

Flags follow nats-streaming-server where they mean the same thing, so people
who ran the original feel at home. This is the only place options are read.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from ..defaults import DEFAULT_CLUSTER_ID
from .channels import ChannelLimits
from .limits import DEFAULT_MAX_CHANNELS, LimitsError, StoreLimits, load, parse_duration, parse_size
from .quotas import DEFAULT_QUOTAS
from .quotas import load as load_quotas

DEFAULT_PORT = 4222
DEFAULT_HB_INTERVAL = 30.0
DEFAULT_HB_TIMEOUT = 10.0
DEFAULT_HB_FAIL_COUNT = 10
DEFAULT_DUP_CHECK_TIMEOUT = 0.5  # liveness check of a clientID that connects twice
DEFAULT_PUB_ACK_TIMEOUT = 30.0  # give up on a JetStream store and answer with an error
DEFAULT_DIR = "stanfleet-data"


@dataclass
class ServerOptions:
    cluster_id: str = DEFAULT_CLUSTER_ID
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    monitor_port: int | None = None
    store: str = "file"  # file | memory
    data_dir: str = DEFAULT_DIR
    nats_url: str | None = None  # None: embed a nats-server child
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
    tls_ca: str | None = None  # CA that signed the NATS server's certificate
    authz: bool = False  # every request must carry Nats-Request-Info and pass authz.py
    accounts_file: str | None = None  # embedded nats-server: accounts and users (creds.py)
    broker_pid_file: str | None = None  # embedded nats-server's pid, for reloads
    security_dir: str | None = None  # creds store: revocations end sessions (revocation.py)
    # Per-identity quotas (quotas.py), applied when authz is on; None: none.
    quotas: dict | None = field(default_factory=lambda: dict(DEFAULT_QUOTAS))


def _duration(text: str) -> float:
    """'30s', '500ms', '2m', '1h' or a plain number of seconds, as in the original flags."""
    try:
        return parse_duration(text)
    except LimitsError as e:
        raise argparse.ArgumentTypeError(str(e))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("streaming server")
    g.add_argument("-cid", "--cluster_id", dest="cluster_id", default=DEFAULT_CLUSTER_ID,
                   help="cluster ID clients connect to (default: %(default)s)")
    g.add_argument("-store", "--store", dest="store", choices=("file", "memory"), default="file",
                   help="JetStream storage for channels (default: %(default)s)")
    g.add_argument("-dir", "--dir", dest="data_dir", default=DEFAULT_DIR,
                   help="data directory of the embedded nats-server (default: %(default)s)")
    g.add_argument("--replicas", type=int, default=1,
                   help="JetStream replicas per channel, for a clustered NATS (default: 1)")
    g.add_argument("-hbi", "--hb_interval", dest="hb_interval", type=_duration,
                   default=DEFAULT_HB_INTERVAL, help="interval between client heartbeats (30s)")
    g.add_argument("-hbt", "--hb_timeout", dest="hb_timeout", type=_duration,
                   default=DEFAULT_HB_TIMEOUT, help="how long to wait for a heartbeat reply (10s)")
    g.add_argument("-hbf", "--hb_fail_count", dest="hb_fail_count", type=int,
                   default=DEFAULT_HB_FAIL_COUNT,
                   help="missed heartbeats before a client is declared dead (10)")
    lim = p.add_argument_group("store limits (0 = unlimited)")
    d = ChannelLimits()
    lim.add_argument("-mc", "--max_channels", type=int, default=DEFAULT_MAX_CHANNELS,
                     help="max number of channels (default: %(default)s)")
    lim.add_argument("-msu", "--max_subs", type=int, default=d.max_subs,
                     help="max subscriptions per channel (default: %(default)s)")
    lim.add_argument("-mm", "--max_msgs", type=int, default=d.max_msgs,
                     help="max messages per channel (default: %(default)s)")
    lim.add_argument("-mb", "--max_bytes", type=_size, default=d.max_bytes,
                     help="max bytes per channel, e.g. 1GB (default: %(default)s)")
    lim.add_argument("-ma", "--max_age", type=_duration, default=0,
                     help="max age of messages, e.g. 24h (default: unlimited)")
    lim.add_argument("-mi", "--max_inactivity", type=_duration, default=0,
                     help="delete a channel without messages or subscriptions for this long")
    lim.add_argument("-sc", "--stan_config", dest="limits_file", default=None,
                     help="JSON file with store_limits and per-channel overrides "
                          "(wildcard keys allowed, e.g. devices.*.events)")
    n = p.add_argument_group("NATS")
    n.add_argument("-ns", "--nats_server", "--nats", dest="nats_url", default=None,
                   help="attach to this NATS URL instead of starting an embedded nats-server")
    n.add_argument("-a", "--addr", dest="host", default="0.0.0.0",
                   help="embedded nats-server: host to listen on (default: %(default)s)")
    n.add_argument("-p", "--port", dest="port", type=int, default=DEFAULT_PORT,
                   help="embedded nats-server: client port, -1 for random (default: %(default)s)")
    n.add_argument("-m", "--http_port", dest="monitor_port", type=int, default=None,
                   help="HTTP port for monitoring endpoints")
    n.add_argument("--tlscert", dest="tls_cert", default=None,
                   help="embedded nats-server: TLS certificate (PEM); plaintext is then refused")
    n.add_argument("--tlskey", dest="tls_key", default=None, help="key for --tlscert")
    n.add_argument("-tls_client_cacert", "--tls_client_cacert", dest="tls_ca", default=None,
                   help="CA (PEM) to verify the NATS server with (stanfleet certs init)")
    n.add_argument("--security-dir", dest="security_dir", default=None,
                   help="credentials store of 'stanfleet creds' (e.g. stanfleet-data/security): "
                        "the embedded nats-server gets its accounts, users and TLS "
                        "certificate (DIR/certs), the server logs in as its own user, and "
                        "--authz is on")
    n.add_argument("--authz", action="store_true",
                   help="authorize every request by the identity nats-server puts in its "
                        "Nats-Request-Info header: devices only their own channels, services "
                        "by role (needs the account layout of docs/security-design.md)")
    n.add_argument("--no-quotas", dest="no_quotas", action="store_true",
                   help="no per-identity quotas (quotas.py; set them in the 'quotas' section "
                        "of the -sc file instead)")
    n.add_argument("--user", default=None, help="user required from clients / used to connect")
    n.add_argument("--pass", dest="password", default=None, help="password for --user")
    n.add_argument("--auth", dest="token", default=None, help="authorization token")
    lg = p.add_argument_group("logging")
    lg.add_argument("-SD", "--stan_debug", dest="debug", action="store_true",
                    help="debug logging of the streaming server")
    lg.add_argument("-SV", "--stan_trace", dest="trace", action="store_true",
                    help="trace every protocol message")
    lg.add_argument("-SDV", dest="debug_trace", action="store_true", help="-SD and -SV")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except LimitsError as e:
        raise argparse.ArgumentTypeError(str(e))


def from_args(args: argparse.Namespace) -> ServerOptions:
    for name in ("max_channels", "max_subs", "max_msgs", "max_bytes"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must not be negative")
    flags = StoreLimits(max_channels=args.max_channels, defaults=ChannelLimits(
        max_msgs=args.max_msgs, max_bytes=args.max_bytes, max_age=args.max_age,
        max_subs=args.max_subs, max_inactivity=args.max_inactivity))
    limits = load(args.limits_file, flags)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tlscert and --tlskey go together")
    if args.tls_cert and not args.tls_ca:
        raise ValueError("--tlscert needs --tls_client_cacert so the server can verify itself")
    if args.hb_fail_count < 1:
        raise ValueError("-hbf must be at least 1")
    if args.replicas < 1 or args.replicas > 5:
        raise ValueError("--replicas must be between 1 and 5")
    opts = ServerOptions(
        cluster_id=args.cluster_id,
        host=args.host,
        port=args.port,
        monitor_port=args.monitor_port,
        store=args.store,
        data_dir=args.data_dir,
        nats_url=args.nats_url,
        replicas=args.replicas,
        hb_interval=args.hb_interval,
        hb_timeout=args.hb_timeout,
        hb_fail_count=args.hb_fail_count,
        user=args.user,
        password=args.password,
        token=args.token,
        debug=args.debug or args.debug_trace,
        trace=args.trace or args.debug_trace,
        limits=limits,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        authz=args.authz,
        quotas=None if args.no_quotas else load_quotas(args.limits_file),
    )
    if args.security_dir:
        for name, value in _security(args).items():
            setattr(opts, name, value)
        opts.authz = True
    return opts


def _security(args: argparse.Namespace) -> dict:
    """Settings from the credentials store: our login, the broker's accounts, TLS."""
    from ..security.certs import CertPaths
    from ..security.creds import Store

    if args.user or args.token:
        raise ValueError("--security-dir brings its own login: leave out --user/--auth")
    store = Store(args.security_dir, cluster_id=args.cluster_id)  # permissions name it
    certs = CertPaths(store.certs_dir)
    if not os.path.exists(certs.ca):
        raise ValueError(f"no certificates in {store.certs_dir}: run "
                         f"'stanfleet certs init --dir {store.certs_dir}' first")
    user, password = store.server_login()
    embedded = not args.nats_url
    return {"user": user, "password": password, "tls_ca": args.tls_ca or certs.ca,
            "tls_cert": args.tls_cert or (certs.server if embedded else None),
            "tls_key": args.tls_key or (certs.server_key if embedded else None),
            "security_dir": args.security_dir,
            "accounts_file": store.accounts_file if embedded else None,
            "broker_pid_file": store.pid_file if embedded else None}
