"""Serve STAN's request subjects before the server is ready, then hand over.

The embedded nats-server opens the client port long before Python has
imported nats-py and restored the server's state. A client that connects the
moment the port accepts (test harnesses do) would get "no responders" and
fail at once. So right after nats-server is up, a bare socket speaking the
NATS text protocol (nothing heavy to import) subscribes to every subject a
STAN client sends to (discover, pub, sub, unsub, subclose, close, pings;
publishes on a socket of their own, as the server has them):

- A ConnectRequest it can prove the server would accept, it answers itself,
  with the server's own answer (handshake.py). Provable only where our own
  nats-server, just started, alone (no cluster, no config file that could
  make one), holds every registration, and nothing but the clientID decides
  (no authorization or quotas: may_answer). With the memory store nothing
  is registered yet. With the file store the clients bucket tells
  (early_store.py): a registered clientID gets Go's liveness check of its
  old session (a request to its heartbeat inbox: a reply, and the answer is
  Go's "clientID already registered"; no responders or no reply within
  dup_check_timeout, and the new session is written over the old one, which
  the server then ends as its own replace path does, at the handover); no
  bucket yet (a first start), and the early layer creates the state buckets
  as the server would (buckets.py). A clientID or conn_id it answered already, and
  anything it cannot decode or that fails the server's name checks, it
  holds: the server decides those. Not checked here: a conn_id equal to
  that of a session restored from the file store (the server refuses it);
  clients draw a random one per connection.
- Everything else it holds, in arrival order.

Handover without gap, duplicate or reordering: the sockets are not closed but
become the server's relay connections (relay.Relay.adopt), subscriptions and
all, with the requests held and the bytes not yet parsed; the server
registers the sessions answered here first, then takes the held requests in
order. Nothing is unsubscribed and subscribed again, so no request meets
"no responders" and none reaches two subscribers.

Durability (state.py: a registration is written before the connect is
answered): with the file store the early layer writes it, and answers once
JetStream has acknowledged the write. With the memory store the server
writes it, before any other request of the session is handled; until then
it exists only in this process, which is no loss: the bucket lives in the
nats-server child that dies with us (die_with_parent), so no crash keeps a
record the answer could contradict, or loses one that would have survived.

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
import time
from dataclasses import dataclass

from .errors import ERR_INVALID_CLIENT
from .naming import Subjects, check_client_id, check_subject
from .options import DEFAULT_DUP_CHECK_TIMEOUT

log = logging.getLogger("stanfleet.streaming")

DEFAULT_CONNECT_TIMEOUT = 2.0
# Held at most, per connection; later requests are dropped, unanswered, as a
# slow consumer's are: their clients time out and retry, and a publish not
# acknowledged was not stored.
MAX_HELD = 100_000
# At handover, the clients bucket's answers still awaited are awaited this
# long (seconds); then their connects are the server's.
DEFAULT_STORE_PATIENCE = 2.0
MAX_HELD_BYTES = 64 * 1024 * 1024


@dataclass
class Handover:
    """What a relay adopts: a socket, its subscriptions, what it held, in order."""
    sock: socket.socket
    sids: dict[str, bytes]  # subject -> sid
    held: list[tuple]  # (sid, subject, reply, raw headers | None, payload), arrival order
    rest: bytes  # read but not yet parsed
    max_payload: int = 1024 * 1024


def may_answer(opts) -> bool:
    """Whether a connect can be proven new: only our own nats-server holds
    registrations (none yet with the memory store; the clients bucket tells
    with the file store), and nothing but the clientID decides the answer."""
    return (not opts.nats_url and not opts.ft_group
            and not (opts.routes or opts.cluster_url or opts.clustered or opts.nats_config)
            and not (opts.authz or opts.security_dir or opts.tls_cert or opts.accounts_file))


class _Conn:
    """One bare NATS connection of the early layer, to become one relay's."""

    def __init__(self, addr, name: str, auth: dict, subjects: list[str], prefix: str):
        self.sids = {subject: f"{prefix}{i}".encode() for i, subject in enumerate(subjects, 1)}
        self.held: list[tuple] = []
        self.held_bytes = 0
        self.max_payload = 1024 * 1024
        sock = socket.create_connection(addr, timeout=DEFAULT_CONNECT_TIMEOUT)
        # As the relay logs in (relay._dial): headers, since the relay stores
        # with HPUB and reads HMSG.
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "name": name, "lang": "python-raw", "version": "1", **auth}
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
        self.sock: socket.socket | None = sock
        self.buf = buf.split(b"PONG\r\n", 1)[1]  # read, not parsed yet

    def handover(self) -> Handover:
        h = Handover(self.sock, dict(self.sids), self.held, self.buf, self.max_payload)
        self.sock, self.held, self.buf = None, [], b""
        return h


class EarlyLayer:
    """Two connections, as the server has: publishes (the relay's, paused when
    JetStream falls behind) and the other requests (not paused by that)."""

    def __init__(self, host: str, port: int, cluster_id: str, *, answer: bool,
                 lookup: bool = False, user: str | None = None, password: str | None = None,
                 token: str | None = None, dup_check_timeout: float = DEFAULT_DUP_CHECK_TIMEOUT,
                 storage: str = "file", replicas: int = 1):
        self.addr = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)
        self.cluster_id = cluster_id
        self.subjects = Subjects(cluster_id)
        self.auth = {"user": user, "pass": password} if user else \
            {"auth_token": token} if token else {}
        self.answer = answer
        # File store: a connect is answered once the clients bucket says the
        # clientID is not registered and has the new registration (early_store).
        self.store = None
        if lookup:
            from .early_store import Registrar

            self.store = Registrar(self, cluster_id, storage=storage, replicas=replicas,
                                   dup_check_timeout=dup_check_timeout)
        # clientID -> the record of the session it replaced (dead), for the
        # server to end that session as its own replace path does (handover).
        self.replaced: dict[str, dict] = {}
        self._decided = threading.Event()  # a first connect answered, refused or left
        # handshake.py once imported (protobuf): until then connects are held,
        # and answered when it comes (answer_from_now). Set by the reader
        # thread alone, after it answered the held ones: in arrival order.
        self._handshake = None
        self._loaded = None
        self.answered: list = []  # ConnectRequests answered here, in order
        self._client_ids: set[str] = set()  # answered, or being registered
        # clientIDs the bucket found registered (or could not tell about): the
        # server's, as are all connects once the bucket is found missing.
        self._left: set[str] = set()
        self._conn_ids: set[bytes] = set()
        self.pubs: _Conn | None = None
        self.requests: _Conn | None = None
        self._discover_sid = b""
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1

    def start(self) -> "EarlyLayer":
        """Subscribe, and return once nats-server has confirmed it (PING/PONG).
        First thing once the port is open: a connect that finds no subscriber
        gets "no responders", and a harness gives up on the first."""
        s, cid = self.subjects, self.cluster_id
        # Named as the connections they become (server.py).
        self.pubs = _Conn(self.addr, f"_STAN-{cid}-relay", self.auth, [s.pub_prefix + ".>"], "p")
        try:
            self.requests = _Conn(self.addr, f"_STAN-{cid}-requests", self.auth,
                                  [s.discover, s.pings, s.sub, s.unsub, s.subclose, s.close] +
                                  ([self.store.inbox + ".*"] if self.store else []), "r")
        except OSError:
            self.pubs.sock.close()
            raise
        self._discover_sid = self.requests.sids[s.discover]
        self._inbox_sid = self.requests.sids[self.store.inbox + ".*"] if self.store else b""
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._read, name="early-requests", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        conns = {c.sock: c for c in (self.pubs, self.requests)}
        stop_by = None  # once asked to stop: the bucket's answers are awaited until then
        try:
            for c in conns.values():
                c.buf = self._parse(c, c.buf)
            while True:
                due = self.store.expire() if self.store else None  # when the next check is
                pending = self.store.pending if self.store else {}
                now = time.monotonic()
                wait = None if due is None else due - now
                if stop_by is not None:
                    if not pending or stop_by <= now:
                        if pending:  # left to the server (they are held)
                            log.warning("early: %d connects' registrations unconfirmed",
                                        len(pending))
                        return  # handover: what is still in the sockets is the relays'
                    wait = stop_by - now if wait is None else min(wait, stop_by - now)
                ready, _, _ = select.select([*conns, self._wake_r], [], [],
                                            None if wait is None else max(wait, 0))
                if self._wake_r in ready:
                    if os.read(self._wake_r, 1) == b"x":
                        stop_by = time.monotonic() + DEFAULT_STORE_PATIENCE
                    else:
                        self._answer_held()
                    continue
                for sock in ready:
                    c = conns[sock]
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    c.buf = self._parse(c, c.buf + chunk)
        except OSError as e:
            log.debug("early requests: %s", e)

    def _parse(self, c: _Conn, buf: bytes) -> bytes:
        """Hold each message (or answer it); returns what is left unparsed."""
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
                if sid == self._inbox_sid:
                    self.store.on_reply(args[0].decode(), headers, payload)
                    continue
                entry = (sid, args[0].decode(), reply, headers, payload)
                if sid == self._discover_sid and self._handshake and self._connect(entry):
                    continue
                if len(c.held) < MAX_HELD and c.held_bytes < MAX_HELD_BYTES:
                    c.held.append(entry)
                    c.held_bytes += size
                continue
            if buf[pos:end] == b"PING":
                c.sock.sendall(b"PONG\r\n")
            pos = end + 2

    def _connect(self, entry: tuple) -> bool:
        """True: answered, as the server would. False: held for the server, or,
        with the file store, held until the clients bucket has spoken (early_store.Registrar)."""
        reply, data = entry[2], entry[4]
        try:
            req = self._handshake.pb.ConnectRequest.FromString(data)
            check_client_id(req.client_id)
            check_subject(req.heartbeat_inbox, "heartbeat inbox")
        except Exception:  # undecodable or an invalid name: the server answers its error
            return False
        conn_id = bytes(req.conn_id)
        if not reply or req.client_id in self._client_ids or (conn_id and conn_id in
                                                                self._conn_ids):
            return False  # registered now: the server's duplicate check decides
        if req.client_id in self._left or (self.store and self.store.no_bucket):
            return False  # not asked again (a client retrying its connect would be)
        self._client_ids.add(req.client_id)
        if conn_id:
            self._conn_ids.add(conn_id)
        if self.store is None:  # memory store: nothing registered before us
            self._accept(req, reply)
            return True
        self.store.check(entry, req)
        return False

    def registered(self, entry: tuple, req, replaced: dict | None) -> None:
        """File store: the registration is in the bucket; answer. replaced: the
        record of the dead session it took the place of."""
        self._unhold(entry)
        if replaced is not None:
            self.replaced[req.client_id] = replaced
        self._accept(req, entry[2])

    def first_decided(self, timeout: float) -> bool:
        """Wait until a first connect was answered, refused or left to the
        server, at most timeout seconds (startup.py)."""
        return self._decided.wait(timeout)

    def leave(self, req) -> None:
        """The connect stays held: the server decides it."""
        self._decided.set()
        self._left.add(req.client_id)
        self._forget(req)

    def _forget(self, req) -> None:
        self._client_ids.discard(req.client_id)
        self._conn_ids.discard(bytes(req.conn_id))

    def _unhold(self, entry: tuple) -> None:
        try:
            self.requests.held.remove(entry)
        except ValueError:
            pass  # not held (the limit): answered all the same

    def refuse(self, entry: tuple, req) -> None:
        """The old session answered its heartbeat: Go's "already registered"."""
        self._unhold(entry)
        self._forget(req)  # a later connect is checked again (it may have died)
        self._decided.set()
        out = self._handshake.pb.ConnectResponse(error=ERR_INVALID_CLIENT).SerializeToString()
        self.requests.sock.sendall(f"PUB {entry[2]} {len(out)}\r\n".encode() + out + b"\r\n")

    def _accept(self, req, reply: str) -> None:
        out = self._handshake.accepted(self.subjects, req).SerializeToString()
        self.requests.sock.sendall(f"PUB {reply} {len(out)}\r\n".encode() + out + b"\r\n")
        self.answered.append(req)
        self._decided.set()

    def answer_from_now(self, handshake) -> None:
        """Answer connects from now on, those held meanwhile first (in the reader
        thread, which alone writes to the sockets)."""
        if not self.answer or self._thread is None:
            return
        self._loaded = handshake
        os.write(self._wake_w, b"a")

    def _answer_held(self) -> None:
        self._handshake = self._loaded
        held, self.requests.held = self.requests.held, []
        for m in held:  # (sid, subject, reply, headers, payload)
            if not (m[0] == self._discover_sid and self._connect(m)):
                self.requests.held.append(m)

    def _stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join()
            self._thread = None
            os.close(self._wake_r)
            os.close(self._wake_w)

    def handover(self) -> tuple[Handover, Handover, list, dict]:
        """Stop reading; (the publish connection, the requests connection, the
        ConnectRequests answered here, clientID -> the record of the dead
        session each replaced) for the relays and the server to adopt."""
        self._stop()
        answered, self.answered = self.answered, []
        replaced, self.replaced = self.replaced, {}
        return self.pubs.handover(), self.requests.handover(), answered, replaced

    def close(self) -> None:
        """Give up (the server did not start): drop the connections."""
        self._stop()
        for c in (self.pubs, self.requests):
            if c is not None and c.sock is not None:
                c.sock.close()
                c.sock = None


def start_early(opts, broker) -> EarlyLayer | None:
    """An EarlyLayer for this server, or None where a bare socket cannot log in."""
    if broker is None or opts.tls_cert or opts.accounts_file:
        return None
    try:
        return EarlyLayer(opts.host, broker.port, opts.cluster_id, answer=may_answer(opts),
                          lookup=opts.store == "file", user=opts.user, password=opts.password,
                          token=opts.token, dup_check_timeout=opts.dup_check_timeout,
                          storage=opts.store, replicas=opts.replicas).start()
    except OSError as e:
        log.debug("no early subscriptions: %s", e)
        return None
