"""The embedded nats-server as the streaming server's options describe it.

Go's nats-streaming-server runs NATS in its own process; we run a real
nats-server child. Its flags are the ones Go passes on to its embedded NATS:
address, port, TLS, users, routes, logging, the `-c` file, and the NATS keys
of the `-sc` file. JetStream settings (store directory, encryption at rest,
sync) come from the streaming options.

NATS clustering (`--cluster`, `--routes`) without `--clustered` is how test
harnesses build a plain NATS cluster out of Go servers whose streaming side
nobody uses. A nats-server in a cluster can only run clustered JetStream,
which a lone seed cannot start, so such a node runs without JetStream: a plain
NATS cluster member (plain_nats_only). With `--clustered` the nodes run one
JetStream cluster and channels are replicated.
"""

from __future__ import annotations

import json
import os

from ..broker import Broker, BrokerConfig
from . import predecessor
from .config_file import nats_conf_text
from .options import ServerOptions

# The embedded nats-server's start: after a crash its predecessor may hold the
# port while it flushes, and a store of 30,000 streams takes tens of seconds
# to load; the broker's own 15 s default failed a 1,000-device restart.
DEFAULT_BROKER_START_TIMEOUT = 180.0


def broker_config(opts: ServerOptions) -> BrokerConfig:
    store_dir = None
    if opts.store == "file":
        store_dir = os.path.join(opts.data_dir, "jetstream")
        os.makedirs(store_dir, exist_ok=True)
    args: list[str] = []
    if opts.accounts_file:
        pass  # our user is one of the accounts' users
    elif opts.user:
        args += ["--user", opts.user, "--pass", opts.password or ""]
    elif opts.token:
        args += ["--auth", opts.token]
    if opts.nats_debug:
        args.append("-D")
    if opts.nats_trace:
        args.append("-V")
    if opts.tls_verify:
        args.append("--tlsverify")
    if opts.tls_client_ca:
        args += ["--tlscacert", opts.tls_client_ca]
    js = []
    if opts.encrypt:
        js += [f"cipher: {opts.encryption_cipher}", f"key: {json.dumps(opts.encryption_key)}"]
    if opts.file_sync:
        js.append("sync_interval: always")
    cluster_port = None
    cluster_host = opts.host
    if opts.cluster_url:
        # nats://host:port of --cluster: the route listener.
        hostport = opts.cluster_url.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        cluster_host, cluster_port = host or opts.host, int(port)
    jetstream = not plain_nats_only(opts)
    monitor = -1 if (opts.monitor_port is not None or opts.https_port is not None) else None
    if not jetstream:
        monitor = opts.monitor_port  # nats-server serves -m itself: no /streaming here
    return BrokerConfig(
        host=opts.host, port=opts.port, store_dir=store_dir, jetstream=jetstream,
        server_name=opts.cluster_node_id or _server_name(opts, cluster_port),
        extra_args=args, monitor_port=monitor,
        tls=(opts.tls_cert, opts.tls_key) if opts.tls_cert else None,
        accounts_file=opts.accounts_file, pid_file=opts.broker_pid_file,
        config_file=opts.nats_config, log_file=opts.log_file,
        cluster_name=opts.cluster_name, cluster_port=cluster_port,
        cluster_host=cluster_host, routes=list(opts.routes), js_extra=", ".join(js),
        extra_config=nats_conf_text(opts.nats_settings))


def _server_name(opts: ServerOptions, cluster_port: int | None) -> str:
    # Names are unique in a NATS cluster: nodes of one -cid differ by route port.
    base = f"stanfleet-{opts.cluster_id}"
    return base if cluster_port is None else f"{base}-{cluster_port}"


def plain_nats_only(opts: ServerOptions) -> bool:
    """A member of a NATS cluster without --clustered: no JetStream, no streaming."""
    return not opts.nats_url and bool(opts.cluster_url) and not opts.clustered


def start_broker(opts: ServerOptions) -> Broker:
    config = broker_config(opts)
    if config.store_dir and config.jetstream:
        predecessor.reclaim(opts.data_dir, config.store_dir)
    broker = Broker(config).start(timeout=DEFAULT_BROKER_START_TIMEOUT)
    if config.store_dir and config.jetstream and broker.proc is not None:
        predecessor.record(opts.data_dir, broker.proc.pid)
    return broker


def nats_tls(opts: ServerOptions) -> dict:
    """Keyword arguments of nats.connect for our own connection to NATS: verified
    against -tls_client_cacert; unverified with -secure, or towards the embedded
    child started with a certificate but no CA to check it (it is ours, on our
    host); with our client certificate when NATS verifies clients."""
    embedded_tls = not opts.nats_url and opts.tls_cert
    if not (opts.tls_ca or opts.secure or embedded_tls or opts.tls_client_cert):
        return {}
    import ssl

    if opts.tls_ca:
        from ..security.certs import client_context

        ctx = client_context(opts.tls_ca)
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if opts.tls_client_cert:
        ctx.load_cert_chain(opts.tls_client_cert, opts.tls_client_key)
    return {"tls": ctx}
