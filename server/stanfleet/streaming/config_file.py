"""nats-streaming-server's configuration file (`-sc`), read the Go server's way.

The file is NATS configuration syntax (natsconf.py), or JSON. Streaming
settings sit in a `streaming { ... }` block, or at the top level when there is
no such block; the other top-level keys are NATS settings (port, cluster,
tls...) for the embedded nats-server, as in Go. Keys take Go's aliases
(`id`/`cid`/`cluster_id`, `store_limits`/`limits`, ...) and come back under
the names of our flags (flags.py), so options.py merges both the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .limits import LimitsError, StoreLimits, from_document

# Go's key (lower case) -> our flag's dest.
STREAMING_KEYS = {
    "id": "cluster_id", "cid": "cluster_id", "cluster_id": "cluster_id",
    "st": "store", "store": "store", "store_type": "store", "storetype": "store",
    "dir": "data_dir", "datastore": "data_dir",
    "sd": "stan_debug", "stan_debug": "stan_debug",
    "sv": "stan_trace", "stan_trace": "stan_trace",
    "ns": "nats_url", "nats_server": "nats_url", "nats_server_url": "nats_url",
    "secure": "secure",
    "hbi": "hb_interval", "hb_interval": "hb_interval",
    "server_to_client_hb_interval": "hb_interval",
    "hbt": "hb_timeout", "hb_timeout": "hb_timeout", "server_to_client_hb_timeout": "hb_timeout",
    "hbf": "hb_fail_count", "hb_fail_count": "hb_fail_count",
    "server_to_client_hb_fail_count": "hb_fail_count",
    "ft_group": "ft_group", "ft_group_name": "ft_group",
    "encrypt": "encrypt", "encryption_cipher": "encryption_cipher",
    "encryption_key": "encryption_key",
    "replace_durable": "replace_durable",
    "channel_families": "channel_families",
    "username": "user", "user": "user", "password": "password", "token": "token",
    "syslog_name": "syslog_name",
}
IGNORED_STREAMING_KEYS = {"partitioning", "discover_prefix_subject", "credentials",
                          "nkey_seed_file", "file", "file_options", "sql", "sql_options"}
LIMITS_KEYS = {"max_channels": "max_channels", "max_chans": "max_channels",
               "max_msgs": "max_msgs", "max_msg": "max_msgs", "max_bytes": "max_bytes",
               "max_age": "max_age", "max_subs": "max_subs", "max_subscriptions": "max_subs",
               "max_inactivity": "max_inactivity"}
CLUSTER_KEYS = {"node_id": "cluster_node_id", "peers": "cluster_peers",
                "sync": "cluster_sync", "bootstrap": "cluster_bootstrap",
                "log_path": "cluster_log_path", "raft_logging": "cluster_raft_logging"}
TLS_KEYS = {"client_cert": "tls_client_cert", "client_key": "tls_client_key",
            "client_ca": "tls_ca"}
# NATS settings our own flags already carry, so -p on the command line still wins.
NATS_KEYS = {"port": "port", "host": "host", "net": "host", "listen": "listen",
             "http_port": "monitor_port", "monitor_port": "monitor_port",
             "https_port": "https_port", "pid_file": "pid_file", "log_file": "log_file",
             "debug": "nats_debug", "trace": "nats_trace", "logtime": "logtime",
             "syslog": "syslog", "remote_syslog": "remote_syslog"}


@dataclass
class Parsed:
    settings: dict = field(default_factory=dict)  # flag dest -> value
    limits: dict = field(default_factory=dict)  # a store_limits block, our JSON's names
    nats: dict = field(default_factory=dict)  # other NATS settings for the embedded server
    quotas: dict = field(default_factory=dict)  # per-identity quotas (quotas.py), as written


def load(path: str) -> Parsed:
    doc = _read(path)
    out = Parsed()
    streaming = _get(doc, "streaming")
    if streaming is None:
        streaming, nats_doc = doc, {}
    else:
        if not isinstance(streaming, dict):
            raise ValueError(f"{path}: 'streaming' must be a block")
        nats_doc = {k: v for k, v in doc.items() if k.lower() != "streaming"}
    for key, value in streaming.items():
        low = key.lower()
        if low in STREAMING_KEYS:
            out.settings[STREAMING_KEYS[low]] = value
        elif low in ("store_limits", "limits"):
            out.limits = _limits_block(value, path)
        elif low == "quotas":
            if not isinstance(value, dict):
                raise ValueError(f"{path}: quotas must be a block")
            out.quotas = value
        elif low == "cluster":
            out.settings.update(_block(value, CLUSTER_KEYS, path, "cluster"))
            out.settings["clustered"] = True
        elif low == "tls":
            out.settings.update(_block(value, TLS_KEYS, path, "tls"))
        elif low in IGNORED_STREAMING_KEYS:
            if low.startswith("sql"):
                out.settings["sql_driver"] = "config"
        elif streaming is doc:
            nats_doc[key] = value  # a top-level file: NATS keys sit beside ours
        else:
            raise ValueError(f"{path}: unknown streaming setting {key!r}")
    for key, value in nats_doc.items():
        low = key.lower()
        if low in NATS_KEYS:
            if low == "listen":
                host, _, port = str(value).rpartition(":")
                out.settings.update(host=host or None, port=int(port))
            else:
                out.settings[NATS_KEYS[low]] = value
        else:
            out.nats[key] = value
    return out


def nats_file_settings(path: str) -> dict:
    """From a nats-server config (`-c`): the settings our own flags also carry."""
    doc = _read(path)
    out = {}
    for key, value in doc.items():
        low = key.lower()
        if low in NATS_KEYS and low != "listen":
            out[NATS_KEYS[low]] = value
    out["nats_config"] = path
    return out


def store_limits(block: dict, base: StoreLimits, path: str) -> StoreLimits:
    if not block:
        return base
    return from_document(block, base, path)


def nats_conf_text(settings: dict) -> str:
    """NATS settings as configuration text: JSON values are NATS syntax."""
    return "\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in settings.items())


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read configuration file {path}: {e.strerror}") from None
    try:
        doc = json.loads(text)  # our earlier JSON limits files, as they are
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: the configuration must be an object")
        return doc
    except json.JSONDecodeError:
        pass
    from . import natsconf  # here: a server started with no file reads none

    try:
        return natsconf.loads(text, path)
    except natsconf.ConfError as e:
        raise ValueError(str(e)) from None


def _get(doc: dict, name: str):
    for key, value in doc.items():
        if key.lower() == name:
            return value
    return None


def _block(value, names: dict, path: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where!r} must be a block")
    out = {}
    for key, v in value.items():
        low = key.lower()
        if low in names:
            out[names[low]] = v
    return out


def _limits_block(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise LimitsError(f"{path}: store_limits must be a block")
    out = {}
    for key, v in value.items():
        low = key.lower()
        if low in ("channels", "channels_limits"):
            if not isinstance(v, dict):
                raise LimitsError(f"{path}: channels must be a block")
            out["channels"] = {name: _channel(over, path, name) for name, over in v.items()}
        else:
            out[LIMITS_KEYS.get(low, key)] = v
    return out


def _channel(over, path: str, name: str) -> dict:
    if not isinstance(over, dict):
        raise LimitsError(f"{path}: limits of {name!r} must be an object")
    return {LIMITS_KEYS.get(k.lower(), k): v for k, v in over.items()}
