"""The early layer's look into the clients bucket, and its write there (file store).

With the file store a clientID may be registered from an earlier run. One
JetStream request tells: the last message on the key's subject in the
bucket's stream (STREAM.MSG.GET, answered whether or not the stream allows
direct gets). Absent, or a delete/purge marker: not registered. Registered:
the old session's record says where its heartbeat inbox is, for the
liveness check the server would make (Registrar, below). No bucket yet (a first
start in this directory): the early layer creates it (buckets.py).

A new session is then written as the server writes it (handshake.client_record)
with the key's last sequence as the expected one, so a write that came
between (the server's, another connect's) is never overwritten, and is
answered only once JetStream has acknowledged the write, as state.py
requires. Raw NATS requests and JSON: nothing to import but the standard
library, the early layer's rule.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass

from .buckets import create_requests, created
from .naming import state_buckets

ERR_NO_MESSAGE = 10037  # JetStream: no message found (on that subject)
ERR_NO_STREAM = 10059  # JetStream: stream not found
DELETED = (b"KV-Operation: DEL", b"KV-Operation: PURGE")
# A request nobody is subscribed to: nats-server's status reply (headers only).
NO_RESPONDERS = b"NATS/1.0 503"

ABSENT, REGISTERED, NO_BUCKET, UNKNOWN = "absent", "registered", "no bucket", "unknown"


@dataclass
class Found:
    """What the bucket said about a clientID."""
    state: str  # ABSENT, REGISTERED, NO_BUCKET or UNKNOWN
    seq: int = 0  # the key's last sequence (0: none): the write's expected one
    record: dict | None = None  # REGISTERED: the old session's record


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

    def write(self, client_id: str, record: dict, expected_seq: int) -> tuple[str, bytes, bytes]:
        """(subject, headers, payload) of the registration's write: refused by
        JetStream if the key changed since expected_seq (0: must not exist)."""
        headers = (f"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: {expected_seq}\r\n\r\n"
                   .encode())
        return self.key_subject(client_id), headers, json.dumps(record).encode()


def read_lookup(reply: bytes) -> Found:
    """From the lookup's reply. UNKNOWN on anything unexpected (e.g. "no
    responders": JetStream is not up yet): then the server decides."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return Found(UNKNOWN)
    if "message" in doc:
        msg = doc["message"]
        seq = int(msg.get("seq", 0))
        headers = base64.b64decode(msg.get("hdrs") or "")
        if any(marker in headers for marker in DELETED):
            return Found(ABSENT, seq)
        try:
            record = json.loads(base64.b64decode(msg.get("data") or ""))
        except ValueError:
            return Found(UNKNOWN)
        if not isinstance(record, dict) or not isinstance(record.get("hb_inbox"), str) \
                or record.get("owner"):  # an identity's session: the server's (authz)
            return Found(UNKNOWN)
        return Found(REGISTERED, seq, record)
    code = doc.get("error", {}).get("err_code")
    return Found(ABSENT) if code == ERR_NO_MESSAGE else \
        Found(NO_BUCKET) if code == ERR_NO_STREAM else Found(UNKNOWN)


def stored(reply: bytes) -> bool:
    """From the write's reply: JetStream acknowledged it."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return False
    return "error" not in doc and "seq" in doc


class Registrar:
    """The file store's part of the early layer (early.EarlyLayer): for each
    connect, the bucket's word, then Go's liveness check of a registered
    clientID's old session, or the buckets' creation on a first start, then
    the write; the layer answers (registered), refuses (the old session is
    alive) or holds the connect for the server (leave). Runs in the layer's
    reader thread; replies come on `inbox`.<token>, on the layer's socket."""

    def __init__(self, layer, cluster_id: str, *, storage: str, replicas: int,
                 dup_check_timeout: float):
        self.layer = layer
        self.cluster_id = cluster_id
        self.storage, self.replicas = storage, replicas
        self.dup_check_timeout = dup_check_timeout
        self.bucket = ClientsBucket(cluster_id)
        self.inbox = f"_STAN.early.{os.urandom(6).hex()}"
        self.pending: dict[str, tuple] = {}  # token -> (stage, held entry, request, Found)
        self._deadlines: dict[str, float] = {}  # token -> when a liveness check gives up
        self._token = 0
        # Connects waiting for the state buckets' creation (a first start).
        self._awaiting_bucket: list[tuple] = []
        self._creates_due = 0
        self._create_failed = False
        self.no_bucket = False  # and it could not be created: every connect is the server's

    def check(self, entry: tuple, req) -> None:
        """Begin with a connect the layer holds meanwhile."""
        self._request("get", entry, req, *self.bucket.lookup(req.client_id))

    def _request(self, stage: str, entry: tuple | None, req, subject: str, payload: bytes,
                 *, found: Found | None = None, headers: bytes = b"",
                 timeout: float | None = None) -> None:
        self._token += 1
        token = str(self._token)
        self.pending[token] = (stage, entry, req, found)
        if timeout is not None:
            self._deadlines[token] = time.monotonic() + timeout
        reply = f"{self.inbox}.{token}"
        if headers:
            head = f"HPUB {subject} {reply} {len(headers)} {len(headers) + len(payload)}\r\n"
        else:
            head = f"PUB {subject} {reply} {len(payload)}\r\n"
        self.layer.requests.sock.sendall(head.encode() + headers + payload + b"\r\n")

    def expire(self) -> float | None:
        """Liveness checks that got no answer in time: the old session is dead
        (Go's rule), so the new one is written. Returns when the next one is
        due (time.monotonic), or None."""
        now = time.monotonic()
        for token in [t for t, when in self._deadlines.items() if when <= now]:
            del self._deadlines[token]
            _, entry, req, found = self.pending.pop(token)
            self._write(entry, req, found)
        return min(self._deadlines.values()) if self._deadlines else None

    def on_reply(self, subject: str, headers: bytes | None, payload: bytes) -> None:
        """An answer to one of our requests: the bucket's word on a clientID,
        the old session's to its liveness check, a bucket's creation, a write."""
        token = subject.rsplit(".", 1)[-1]
        self._deadlines.pop(token, None)
        p = self.pending.pop(token, None)
        if p is None:
            return
        stage, entry, req, found = p
        if stage == "create":
            self._bucket_created(payload)
        elif stage == "get":
            found = read_lookup(payload)
            if found.state == ABSENT:
                self._write(entry, req, found)
            elif found.state == REGISTERED:  # Go's check: ask the old session
                self._request("ping", entry, req, found.record["hb_inbox"], b"", found=found,
                              timeout=self.dup_check_timeout)
            elif found.state == NO_BUCKET and not self._create_failed:
                self._create_buckets(entry, req)
            else:
                self.layer.leave(req)
        elif stage == "ping":
            if headers is not None and headers.startswith(NO_RESPONDERS):
                self._write(entry, req, found)  # nobody there: the old session is dead
            else:
                self.layer.refuse(entry, req)
        elif stage == "put" and stored(payload):
            self.layer.registered(entry, req, found.record)
        else:  # not written (a write came between?): the server decides
            self.layer.leave(req)

    def _create_buckets(self, entry: tuple, req) -> None:
        """A first start: the state buckets are created (buckets.py, the
        server's config), then the connects that found none are written."""
        self._awaiting_bucket.append((entry, req))
        if self._creates_due:
            return  # being created
        creates = create_requests(self.cluster_id, storage=self.storage, replicas=self.replicas)
        self._creates_due = len(creates)
        for subject, payload in creates:
            self._request("create", None, None, subject, payload)

    def _bucket_created(self, payload: bytes) -> None:
        self._creates_due -= 1
        self._create_failed = self._create_failed or not created(payload)
        if self._creates_due:
            return
        waiting, self._awaiting_bucket = self._awaiting_bucket, []
        self.no_bucket = self._create_failed
        for entry, req in waiting:
            if self._create_failed:
                self.layer.leave(req)
            else:
                self._write(entry, req, Found(ABSENT))

    def _write(self, entry: tuple, req, found: Found) -> None:
        """The new session's registration, in the server's format, over what
        the lookup found and nothing newer; answered once JetStream has it."""
        hs = self.layer._handshake
        ping_interval, ping_max_out = hs.ping_settings(req)
        record = hs.client_record(req.client_id, bytes(req.conn_id), req.heartbeat_inbox,
                                  req.protocol, ping_interval, ping_max_out, time.time(), None)
        subject, headers, payload = self.bucket.write(req.client_id, record, found.seq)
        self._request("put", entry, req, subject, payload, found=found, headers=headers)
