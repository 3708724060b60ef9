"""The streams behind the clients and subscriptions KV buckets (state.py).

One description for the two places that create them: the server (state.py,
at start-up) and the early layer (early_store.py), which creates them on a
first start in a new directory so that it can answer the first connects
before the server is ready. Both send this config as it stands, in a raw
`$JS.API.STREAM.CREATE` request, so the two can never differ: JetStream
accepts a create of an existing stream only when the config is the same.

It is a KV bucket's stream as nats-py's create_key_value makes one (kv.get,
put, update and purge work on it): subjects `$KV.<bucket>.>`, one value a
key (history 1), rollup headers for purges, deletes denied, discard new,
the two-minute duplicate window, no limits. Standard library only: the
early layer imports it before anything heavy.
"""

from __future__ import annotations

import json

from .naming import state_buckets

DUPLICATE_WINDOW_NS = 120 * 1_000_000_000  # nats-py's KV default: two minutes
DESCRIPTIONS = ("STAN clients", "STAN subscriptions")


def stream_config(bucket: str, description: str, *, storage: str, replicas: int) -> dict:
    """The JetStream stream config of one state bucket (storage "file" or "memory")."""
    return {"name": f"KV_{bucket}", "description": description,
            "subjects": [f"$KV.{bucket}.>"], "retention": "limits",
            "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_age": 0,
            "max_msg_size": -1, "max_msgs_per_subject": 1, "discard": "new",
            "storage": storage, "num_replicas": replicas,
            "duplicate_window": DUPLICATE_WINDOW_NS, "deny_delete": True,
            "allow_rollup_hdrs": True, "allow_msg_ttl": True}


def create_requests(cluster_id: str, *, storage: str, replicas: int) -> list[tuple[str, bytes]]:
    """(subject, payload) of the STREAM.CREATE of each state bucket: clients, subs."""
    out = []
    for bucket, description in zip(state_buckets(cluster_id), DESCRIPTIONS):
        cfg = stream_config(bucket, description, storage=storage, replicas=replicas)
        out.append((f"$JS.API.STREAM.CREATE.{cfg['name']}", json.dumps(cfg).encode()))
    return out


def created(reply: bytes) -> bool:
    """From a STREAM.CREATE's reply: the stream exists now, with this config."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return False  # e.g. "no responders": JetStream is not up yet
    return "error" not in doc and "config" in doc
