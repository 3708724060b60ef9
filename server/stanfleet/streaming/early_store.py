"""The early layer's look into the clients bucket, and its write there (file store).

With the file store a clientID may be registered from an earlier run, and
then the connect is the server's (its liveness check of the old session).
Whether it is, one JetStream request tells: the last message on the key's
subject in the bucket's stream (STREAM.MSG.GET, answered whether or not the
stream allows direct gets). Absent, or a delete/purge marker: not registered.
A new session is then written as the server writes it (handshake.client_record)
and answered only once JetStream has acknowledged the write, as state.py
requires. Raw NATS requests and JSON: nothing to import but the standard
library, the early layer's rule.
"""

from __future__ import annotations

import base64
import json

from .naming import state_buckets

ERR_NO_MESSAGE = 10037  # JetStream: no message found (on that subject)
ERR_NO_STREAM = 10059  # JetStream: stream not found
DELETED = (b"KV-Operation: DEL", b"KV-Operation: PURGE")


class ClientsBucket:
    def __init__(self, cluster_id: str):
        self.bucket = state_buckets(cluster_id)[0]
        self.stream = f"KV_{self.bucket}"

    def key_subject(self, client_id: str) -> str:
        return f"$KV.{self.bucket}.{client_id}"

    def lookup(self, client_id: str) -> tuple[str, bytes]:
        """(subject, payload) of the request for the key's last message."""
        return (f"$JS.API.STREAM.MSG.GET.{self.stream}",
                json.dumps({"last_by_subj": self.key_subject(client_id)}).encode())


def registered(reply: bytes) -> bool | None:
    """From the lookup's reply: True, False, or None when it cannot tell
    (no bucket yet: a first start, or any error)."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return None  # e.g. "no responders": JetStream is not up yet
    if "message" in doc:
        headers = base64.b64decode(doc["message"].get("hdrs") or "")
        return not any(marker in headers for marker in DELETED)
    if doc.get("error", {}).get("err_code") == ERR_NO_MESSAGE:
        return False
    return None


def no_bucket(reply: bytes) -> bool:
    """From the lookup's reply: the bucket does not exist (a first start in
    this directory; only the server creates it, so not before the handover)."""
    try:
        return json.loads(reply).get("error", {}).get("err_code") == ERR_NO_STREAM
    except ValueError:
        return False


def stored(reply: bytes) -> bool:
    """From the write's reply: JetStream acknowledged it."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return False
    return "error" not in doc and "seq" in doc
