"""Serve STAN's request subjects before the server is ready, then hand over.

The embedded nats-server opens the client port long before Python has
imported nats-py and restored the server's state. A client that connects the
moment the port accepts (test harnesses do) would get "no responders" and
fail at once. So right after nats-server is up, a bare socket speaking the
NATS text protocol (nothing heavy to import) subscribes to every subject a
STAN client sends to (discover, pub, sub, unsub, subclose, close, pings):

- A ConnectRequest it can prove the server would accept, it answers itself,
  with the server's own answer (handshake.py). Provable only where nothing
  can be registered yet: the memory store in an embedded nats-server that
  we just started, alone (no cluster, no config file that could make one),
  no authorization or quotas (see may_answer). A clientID or conn_id it
  answered already, and anything it cannot decode or that fails the
  server's name checks, it holds: the server decides those.
- Everything else it holds, in arrival order.

Handover without gap, duplicate or reordering: the socket is not closed but
becomes the server's relay connection (relay.Relay.adopt), subscriptions and
all, with the requests held and the bytes not yet parsed; the server
registers the sessions answered here first, then takes the held requests in
order. Nothing is unsubscribed and subscribed again, so no request meets
"no responders" and none reaches two subscribers.

Durability (state.py: a registration is written before the connect is
answered): a session answered here is written to the clients bucket by the
server before any of its other requests is handled. Until then it exists
only in this process, which is no loss: answering is limited to the memory
store of an embedded nats-server, whose buckets live in a child that dies
with us (die_with_parent), so no crash keeps a record the answer could
contradict, and none loses one that would have survived.

Only for the embedded nats-server without TLS or an accounts file: the cases
where a plain socket may log in.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
from dataclasses import dataclass, field

from .naming import Subjects, check_client_id, check_subject

log = logging.getLogger("stanfleet.streaming")

DEFAULT_CONNECT_TIMEOUT = 2.0
MAX_HELD = 100_000  # requests held at most; later ones are dropped (their clients retry)


@dataclass
class Handover:
    """What the relay adopts: the socket, its subscriptions, what it held, in order."""
    sock: socket.socket
    sids: dict[str, bytes]  # subject -> sid
    held: list[tuple]  # (sid, subject, reply, raw headers | None, payload), arrival order
    rest: bytes  # read but not yet parsed
    answered: list = field(default_factory=list)  # ConnectRequests answered here
    max_payload: int = 1024 * 1024


def may_answer(opts) -> bool:
    """Whether a connect can be proven new: nothing registered can exist yet."""
    return (opts.store == "memory" and not opts.nats_url and not opts.ft_group
            and not (opts.routes or opts.cluster_url or opts.clustered or opts.nats_config)
            and not (opts.authz or opts.security_dir or opts.tls_cert or opts.accounts_file))


class EarlyLayer:
    def __init__(self, host: str, port: int, cluster_id: str, *, answer: bool,
                 user: str | None = None, password: str | None = None,
                 token: str | None = None, name: str = "_STAN-early"):
        self.addr = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)
        self.subjects = Subjects(cluster_id)
        s = self.subjects
        # The relay's name: the connection becomes the relay's.
        self.name = name
        self.auth = {"user": user, "pass": password} if user else \
            {"auth_token": token} if token else {}
        self.answer = answer
        self.sids = {subject: f"e{i}".encode() for i, subject in enumerate(
            (s.discover, s.pings, s.pub_prefix + ".>", s.sub, s.unsub, s.subclose, s.close), 1)}
        self._discover_sid = self.sids[s.discover]
        self.held: list[tuple] = []
        self.answered: list = []
        self._client_ids: set[str] = set()
        self._conn_ids: set[bytes] = set()
        self.max_payload = 1024 * 1024
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._rest = b""
        self._pb = None  # handshake's protocol_pb2, loaded before the first answer

    def start(self) -> "EarlyLayer":
        """Subscribe, and return once nats-server has confirmed it (PING/PONG)."""
        if self.answer:
            from . import handshake  # protobuf: startup imported it while nats-server started
            self._handshake = handshake
        sock = socket.create_connection(self.addr, timeout=DEFAULT_CONNECT_TIMEOUT)
        # As the relay logs in (relay._dial): headers, since the relay stores
        # with HPUB and reads HMSG.
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "name": self.name, "lang": "python-raw", "version": "1",
                   **self.auth}
        subs = "".join(f"SUB {subject} {sid.decode()}\r\n" for subject, sid in self.sids.items())
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" + subs.encode() +
                     b"PING\r\n")
        buf = b""
        while b"PONG\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk or b"-ERR" in buf + chunk:
                sock.close()
                raise OSError(f"early subscription refused: {(buf + chunk)[-200:]!r}")
            buf += chunk
        info, _, _ = buf.partition(b"\r\n")
        if info.startswith(b"INFO "):
            self.max_payload = json.loads(info[5:]).get("max_payload", self.max_payload)
        sock.settimeout(None)
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._read, args=(buf.split(b"PONG\r\n", 1)[1],),
                                        name="early-requests", daemon=True)
        self._thread.start()
        return self

    def _read(self, buf: bytes) -> None:
        sock = self._sock
        try:
            while True:
                buf = self._parse(buf)
                ready, _, _ = select.select([sock, self._wake_r], [], [])
                if self._wake_r in ready:
                    break  # handover: what is still in the socket is the relay's
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            log.debug("early requests: %s", e)
        self._rest = buf

    def _parse(self, buf: bytes) -> bytes:
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return buf[pos:]
            hmsg = buf.startswith(b"HMSG ", pos)
            if hmsg or buf.startswith(b"MSG ", pos):
                args = buf[pos + (5 if hmsg else 4):end].split(b" ")
                size = int(args[-1])
                start = end + 2
                if len(buf) < start + size + 2:
                    return buf[pos:]  # the payload is still on its way
                hlen = int(args[-2]) if hmsg else 0
                headers = buf[start:start + hlen] if hmsg else None
                payload = buf[start + hlen:start + size]
                reply = args[2].decode() if len(args) == (5 if hmsg else 4) else ""
                pos = start + size + 2
                sid = args[1]
                if sid == self._discover_sid and self.answer and self._answered(reply, payload):
                    continue
                if len(self.held) < MAX_HELD:
                    self.held.append((sid, args[0].decode(), reply, headers, payload))
                continue
            if buf[pos:end] == b"PING":
                self._sock.sendall(b"PONG\r\n")
            pos = end + 2

    def _answered(self, reply: str, data: bytes) -> bool:
        """Answer a connect the server would accept; False: hold it for the server."""
        handshake = self._handshake
        try:
            req = handshake.pb.ConnectRequest.FromString(data)
            check_client_id(req.client_id)
            check_subject(req.heartbeat_inbox, "heartbeat inbox")
        except Exception:  # undecodable or an invalid name: the server answers its error
            return False
        conn_id = bytes(req.conn_id)
        if not reply or req.client_id in self._client_ids or (conn_id and conn_id in
                                                                self._conn_ids):
            return False  # registered now: the server's duplicate check decides
        out = handshake.accepted(self.subjects, req).SerializeToString()
        self._sock.sendall(f"PUB {reply} {len(out)}\r\n".encode() + out + b"\r\n")
        self._client_ids.add(req.client_id)
        if conn_id:
            self._conn_ids.add(conn_id)
        self.answered.append(req)
        return True

    def _stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)

    def handover(self) -> Handover:
        """Stop reading and give the connection, with what it held, to the relay."""
        self._stop()
        h = Handover(self._sock, dict(self.sids), self.held, self._rest, self.answered,
                     self.max_payload)
        self._sock, self.held, self.answered = None, [], []
        return h

    def close(self) -> None:
        """Give up (the server did not start): drop the connection."""
        self._stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def start_early(opts, broker) -> EarlyLayer | None:
    """An EarlyLayer for this server, or None where a bare socket cannot log in."""
    if broker is None or opts.tls_cert or opts.accounts_file:
        return None
    try:
        return EarlyLayer(opts.host, broker.port, opts.cluster_id, answer=may_answer(opts),
                          user=opts.user, password=opts.password, token=opts.token,
                          name=f"_STAN-{opts.cluster_id}-relay").start()
    except OSError as e:
        log.debug("no early subscriptions: %s", e)
        return None
