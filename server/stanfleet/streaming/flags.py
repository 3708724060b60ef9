"""Every command-line flag of nats-streaming-server v0.25.6, and ours.

Go's flag package accepts each name with one or two dashes (`-store`,
`--store`) and `-name=value`; booleans are set by the bare flag or
`-flag=true|false`. The same is registered here so scripts written for the Go
server run unchanged. Each flag's default is None: options.py tells a flag
given on the command line (which beats the -sc/-c configuration file, as in
Go) from one left out.

Flags that mean nothing on JetStream are accepted and explained
(NOT_APPLICABLE), and the SQL store is refused with the alternative.
"""

from __future__ import annotations

import argparse
import sys

GO_VERSION = "0.25.6"  # the nats-streaming-server release whose flags we take

# Go flag -> why it has no effect here (logged once at start when given).
NOT_APPLICABLE = {
    "cluster_log_path": "not applicable: JetStream keeps the replication log",
    "cluster_log_cache_size": "not applicable: JetStream keeps the replication log",
    "cluster_log_snapshots": "not applicable: JetStream snapshots its own Raft log",
    "cluster_trailing_logs": "not applicable: JetStream snapshots its own Raft log",
    "cluster_raft_logging": "not applicable: the Raft log is nats-server's (-D shows it)",
    "cluster_allow_add_remove_node": "not applicable: add or remove NATS nodes instead",
    "cluster_bootstrap": "not applicable: a JetStream cluster elects its leader by itself",
    "file_compact_enabled": "not applicable: JetStream manages files",
    "file_compact_frag": "not applicable: JetStream manages files",
    "file_compact_interval": "not applicable: JetStream manages files",
    "file_compact_min_size": "not applicable: JetStream manages files",
    "file_buffer_size": "not applicable: JetStream manages files",
    "file_crc": "not applicable: JetStream checksums every message block",
    "file_crc_poly": "not applicable: JetStream checksums every message block",
    "file_slice_max_msgs": "not applicable: JetStream manages files",
    "file_slice_max_bytes": "not applicable: JetStream manages files",
    "file_slice_max_age": "not applicable: JetStream manages files",
    "file_slice_archive_script": "not applicable: JetStream manages files",
    "file_fds_limit": "not applicable: JetStream manages files",
    "file_parallel_recovery": "not applicable: JetStream recovers streams itself",
    "file_truncate_bad_eof": "not applicable: JetStream repairs its blocks on recovery",
    "file_read_buffer_size": "not applicable: JetStream manages files",
    "file_auto_sync": "not applicable: JetStream syncs every 2 minutes (--file_sync: always)",
    "syslog_name": "not applicable: Windows event log source only",
}
SQL_FLAGS = ("sql_driver", "sql_source", "sql_no_caching", "sql_max_open_conns",
             "sql_bulk_insert_limit")
SQL_REFUSED = ("the SQL store is not supported: use -store file -dir DIR (JetStream file "
               "storage), or -ns with a clustered JetStream and --replicas 3")

TLS_HELP = """
TLS Options (embedded NATS server, client port):
    --tls                        Enable TLS, do not verify clients
    --tlscert <file>             Server certificate file
    --tlskey <file>              Private key for server certificate
    --tlsverify                  Enable TLS, verify client certificates
    --tlscacert <file>           Client certificate CA for verification

TLS Options (the streaming server's own connection to NATS):
    -secure                      TLS without verifying the NATS server
    -tls_client_cert <file>      Client certificate
    -tls_client_key <file>       Client key
    -tls_client_cacert <file>    CA that signed the NATS server's certificate

Examples:
    stanfleet streaming-server --tlscert server.pem --tlskey server-key.pem \\
        -tls_client_cacert ca.pem
    stanfleet streaming-server -ns tls://nats:4222 -tls_client_cacert ca.pem
"""


def go_bool(text: str | None) -> bool:
    if text is None:
        return True
    low = text.lower()
    if low in ("1", "t", "true", "yes", "on"):
        return True
    if low in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true or false)")


def _flag(group, names: tuple[str, ...], dest: str, kind: str = "str", **kw) -> None:
    """Register names the Go way: each with one and with two dashes."""
    strings = []
    for n in names:
        strings += [f"-{n}", f"--{n}"]
    if kind == "bool":
        kw.update(nargs="?", const="true", type=go_bool, metavar="BOOL")
    elif kind == "int":
        kw.update(type=int)
    group.add_argument(*strings, dest=dest, default=None, **kw)


class _Version(argparse.Action):
    def __init__(self, **kw):
        super().__init__(nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib import metadata

        try:
            ours = metadata.version("stanfleet")
        except metadata.PackageNotFoundError:
            ours = "dev"
        print(f"stanfleet streaming-server version {ours} "
              f"(nats-streaming-server {GO_VERSION} compatible), nats-server: "
              f"{_nats_server_version()}")
        parser.exit()


class _TlsHelp(argparse.Action):
    def __init__(self, **kw):
        super().__init__(nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(TLS_HELP)
        parser.exit()


def _nats_server_version() -> str:
    import subprocess

    from ..broker import nats_server_binary
    try:
        out = subprocess.run([nats_server_binary(), "--version"], capture_output=True,
                             text=True, timeout=5).stdout
        return out.strip().rsplit(" ", 1)[-1] or "?"
    except Exception:
        return "?"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--v", "-version", "--version", action=_Version, help="show version")
    p.add_argument("-help_tls", "--help_tls", action=_TlsHelp, help="TLS help")
    g = p.add_argument_group("streaming server")
    _flag(g, ("cid", "cluster_id"), "cluster_id", help="cluster ID (default: test-cluster)")
    _flag(g, ("st", "store"), "store", type=str.lower, metavar="MEMORY|FILE",
          help="store type: JetStream memory or file storage (default: MEMORY, as in Go)")
    _flag(g, ("dir",), "data_dir",
          help="FILE store: the embedded nats-server's JetStream directory is DIR/jetstream")
    _flag(g, ("ns", "nats_server", "nats"), "nats_url",
          help="attach to this external NATS (JetStream on) instead of an embedded nats-server")
    _flag(g, ("site",), "site_config", metavar="FILE",
          help="the site's deployment config (TOML, deploy/stanfleet.toml): NATS URLs, "
               "cluster ID, CA, login, [streaming] store/dir/ft_group/replicas/monitor_port, "
               "log format, quotas; -sc and flags win over it (-c stays Go's NATS config)")
    _flag(g, ("sc", "stan_config"), "stan_config",
          help="configuration file: Go's format (NATS syntax, `streaming { ... }` block) "
               "or our JSON limits file")
    _flag(g, ("hbi", "hb_interval"), "hb_interval", help="heartbeat interval (30s)")
    _flag(g, ("hbt", "hb_timeout"), "hb_timeout", help="heartbeat response timeout (10s)")
    _flag(g, ("hbf", "hb_fail_count"), "hb_fail_count", "int",
          help="failed heartbeats before a client is closed (10)")
    _flag(g, ("ft_group",), "ft_group", help="fault-tolerance group name (standby servers)")
    _flag(g, ("ft_lease",), "ft_lease",
          help="FT lease: a standby takes over this long after the active's last renewal (2s)")
    _flag(g, ("sl", "signal"), "signal", metavar="SIGNAL[=PID]",
          help="send stop, quit, reopen or reload to a running server (PID, or the -P file)")
    _flag(g, ("encrypt",), "encrypt", "bool", help="JetStream encryption at rest")
    _flag(g, ("encryption_cipher",), "encryption_cipher", help="AES (default) or CHACHA")
    _flag(g, ("encryption_key",), "encryption_key",
          help="encryption key; better in NATS_STREAMING_ENCRYPTION_KEY")
    _flag(g, ("replace_durable",), "replace_durable", "bool",
          help="a durable registered again replaces the existing one instead of an error")
    _flag(g, ("channel_families",), "channel_families", metavar="PATTERN[,PATTERN]",
          help="channels matching a pattern (e.g. devices.*.events) share one JetStream "
               "stream, for fleets of thousands of devices; per channel: sequences, "
               "max_msgs, inactivity; family-wide: max_bytes and max_age (default: none)")
    _flag(g, ("replicas",), "replicas", "int",
          help="JetStream replicas per channel, for a clustered NATS (default: 1)")
    _flag(g, ("security-dir", "security_dir"), "security_dir",
          help="credentials store of 'stanfleet creds' (e.g. stanfleet-data/security): the "
               "embedded nats-server gets its accounts, users and TLS certificate, the server "
               "logs in as its own user, and --authz is on")
    _flag(g, ("authz",), "authz", "bool",
          help="authorize every request by the identity in its Nats-Request-Info header")
    _flag(g, ("no-quotas", "no_quotas"), "no_quotas", "bool",
          help="no per-identity quotas (set them in the 'quotas' block of the -sc file instead)")
    lim = p.add_argument_group("store limits (0 = unlimited)")
    _flag(lim, ("mc", "max_channels"), "max_channels", "int", help="max channels (100,000; Go: 100)")
    _flag(lim, ("msu", "max_subs"), "max_subs", "int", help="max subscriptions per channel (100,000; Go: 1000)")
    _flag(lim, ("mm", "max_msgs"), "max_msgs", "int", help="max messages per channel (1000000)")
    _flag(lim, ("mb", "max_bytes"), "max_bytes", help="max bytes per channel (1000000KB)")
    _flag(lim, ("ma", "max_age"), "max_age", help="max age of messages, e.g. 24h (0: unlimited)")
    _flag(lim, ("mi", "max_inactivity"), "max_inactivity",
          help="delete a channel with no message and no subscription for this long")
    cl = p.add_argument_group("streaming clustering (mapped to a JetStream cluster)")
    _flag(cl, ("clustered",), "clustered", "bool",
          help="replicate channels in the JetStream cluster given with -ns or --routes")
    _flag(cl, ("cluster_node_id",), "cluster_node_id",
          help="this node's name (the embedded nats-server's server_name)")
    _flag(cl, ("cluster_peers",), "cluster_peers",
          help="peer node IDs: replicas = peers + 1 (at most 5)")
    _flag(cl, ("cluster_sync",), "cluster_sync", "bool", help="same as --file_sync")
    for name in ("cluster_bootstrap", "cluster_raft_logging", "cluster_allow_add_remove_node"):
        _flag(cl, (name,), name, "bool", help=NOT_APPLICABLE[name])
    for name in ("cluster_log_path", "cluster_log_cache_size", "cluster_log_snapshots",
                 "cluster_trailing_logs"):
        _flag(cl, (name,), name, help=NOT_APPLICABLE[name])
    fs = p.add_argument_group("file store (JetStream manages its files)")
    _flag(fs, ("file_sync",), "file_sync", "bool",
          help="fsync every write (JetStream sync_interval: always)")
    for name in ("file_compact_enabled", "file_crc", "file_truncate_bad_eof"):
        _flag(fs, (name,), name, "bool", help=NOT_APPLICABLE[name])
    for name in ("file_compact_frag", "file_compact_interval", "file_compact_min_size",
                 "file_buffer_size", "file_crc_poly", "file_slice_max_msgs",
                 "file_slice_max_bytes", "file_slice_max_age", "file_slice_archive_script",
                 "file_fds_limit", "file_parallel_recovery", "file_read_buffer_size",
                 "file_auto_sync"):
        _flag(fs, (name,), name, help=NOT_APPLICABLE[name])
    sq = p.add_argument_group("SQL store (refused)")
    for name in SQL_FLAGS:
        _flag(sq, (name,), name, help=SQL_REFUSED)
    tls = p.add_argument_group("TLS (--help_tls)")
    _flag(tls, ("secure",), "secure", "bool", help="TLS to NATS without verifying the server")
    _flag(tls, ("tls_client_key",), "tls_client_key", help="our client key for NATS")
    _flag(tls, ("tls_client_cert",), "tls_client_cert", help="our client certificate for NATS")
    _flag(tls, ("tls_client_cacert",), "tls_ca", help="CA to verify the NATS server with")
    _flag(tls, ("tls",), "tls", "bool", help="embedded nats-server: TLS, clients not verified")
    _flag(tls, ("tlscert",), "tls_cert", help="embedded nats-server: server certificate")
    _flag(tls, ("tlskey",), "tls_key", help="embedded nats-server: key of --tlscert")
    _flag(tls, ("tlsverify",), "tlsverify", "bool",
          help="embedded nats-server: TLS, verify client certificates")
    _flag(tls, ("tlscacert",), "tlscacert", help="embedded nats-server: CA of client certs")
    n = p.add_argument_group("embedded NATS server")
    _flag(n, ("a", "addr", "net"), "host", help="host to listen on (default: 0.0.0.0)")
    _flag(n, ("p", "port"), "port", "int", help="client port, -1 for random (default: 4222)")
    _flag(n, ("P", "pid"), "pid_file", help="file to store the PID")
    _flag(n, ("m", "http_port"), "monitor_port", "int", help="HTTP monitoring port")
    _flag(n, ("ms", "https_port"), "https_port", "int",
          help="HTTPS monitoring port (certificate of --tlscert)")
    _flag(n, ("c", "config"), "nats_config", help="nats-server configuration file")
    _flag(n, ("nats_monitor",), "nats_monitor_url",
          help="with -ns: that NATS's monitoring URL, served on -m as /varz, /connz... "
               "(default: http://<-ns host>:8222)")
    _flag(n, ("routes",), "routes", help="NATS routes to solicit (comma separated)")
    _flag(n, ("cluster",), "cluster_url", help="NATS cluster URL for routes")
    _flag(n, ("cluster_name",), "cluster_name", help="NATS cluster name")
    _flag(n, ("user",), "user", help="user required for connections (and ours)")
    _flag(n, ("pass",), "password", help="password required for connections")
    _flag(n, ("auth",), "token", help="token required for connections")
    lg = p.add_argument_group("logging")
    _flag(lg, ("SD", "stan_debug"), "stan_debug", "bool", help="streaming server debug output")
    _flag(lg, ("SV", "stan_trace"), "stan_trace", "bool", help="trace STAN protocol")
    _flag(lg, ("SDV",), "stan_debug_trace", "bool", help="-SD and -SV")
    _flag(lg, ("syslog_name",), "syslog_name", help=NOT_APPLICABLE["syslog_name"])
    _flag(lg, ("l", "log"), "log_file", help="file to write the log to")
    _flag(lg, ("T", "logtime"), "logtime", "bool", help="timestamp log lines (default: true)")
    _flag(lg, ("s", "syslog"), "syslog", "bool", help="log to the local syslog")
    _flag(lg, ("r", "remote_syslog"), "remote_syslog", help="syslog server (udp://host:514)")
    _flag(lg, ("D", "debug"), "nats_debug", "bool", help="embedded nats-server debug output")
    _flag(lg, ("V", "trace"), "nats_trace", "bool", help="embedded nats-server protocol trace")
    _flag(lg, ("DV",), "nats_debug_trace", "bool", help="-D and -V")
