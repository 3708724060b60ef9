"""Hold STAN connect requests that arrive before the server is ready.

The embedded nats-server opens the client port long before Python has
imported nats-py and restored the server's state. A client that connects the
moment the port accepts (test harnesses do) would get "no responders" for its
`_STAN.discover.<cluster>` request and fail at once. So right after
nats-server is up, a bare socket speaking the NATS text protocol (nothing to
import) subscribes to the discover subject and keeps what arrives; the server
takes them over when its own subscription is in place and answers them, well
within the clients' connect timeout.

Only for the embedded nats-server without TLS or an accounts file: the cases
where a plain socket may log in.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from dataclasses import dataclass

log = logging.getLogger("stanfleet.streaming")

DEFAULT_CONNECT_TIMEOUT = 2.0
MAX_HELD = 10_000  # requests held at most; later ones are dropped (their clients retry)


@dataclass
class HeldRequest:
    subject: str
    reply: str
    data: bytes


class EarlyDiscover:
    def __init__(self, host: str, port: int, subject: str, *, user: str | None = None,
                 password: str | None = None, token: str | None = None):
        self.addr = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)
        self.subject = subject
        self.auth = {"user": user, "pass": password} if user else \
            {"auth_token": token} if token else {}
        self.held: list[HeldRequest] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> "EarlyDiscover":
        """Subscribe, and return once nats-server has confirmed it (PING/PONG)."""
        sock = socket.create_connection(self.addr, timeout=DEFAULT_CONNECT_TIMEOUT)
        connect = {"verbose": False, "pedantic": False, "name": "_STAN-early", **self.auth}
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" +
                     f"SUB {self.subject} 1\r\nPING\r\n".encode())
        buf = b""
        while b"PONG\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk or b"-ERR" in buf + chunk:
                sock.close()
                raise OSError(f"early subscription refused: {(buf + chunk)[-200:]!r}")
            buf += chunk
        sock.settimeout(None)
        self._sock = sock
        self._thread = threading.Thread(target=self._read, args=(buf.split(b"PONG\r\n", 1)[1],),
                                        name="early-discover", daemon=True)
        self._thread.start()
        return self

    def _read(self, buf: bytes) -> None:
        sock = self._sock
        while True:
            buf = self._parse(buf)
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk

    def _parse(self, buf: bytes) -> bytes:
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return buf
            line = buf[:end]
            if line.startswith(b"MSG "):
                parts = line.split()
                size = int(parts[-1])
                if len(buf) < end + 2 + size + 2:
                    return buf  # the payload is still on its way
                data = buf[end + 2:end + 2 + size]
                reply = parts[3].decode() if len(parts) == 5 else ""
                if reply and len(self.held) < MAX_HELD:
                    self.held.append(HeldRequest(parts[1].decode(), reply, data))
                buf = buf[end + 2 + size + 2:]
                continue
            if line == b"PING":
                try:
                    self._sock.sendall(b"PONG\r\n")
                except OSError:
                    pass
            buf = buf[end + 2:]

    def close(self) -> list[HeldRequest]:
        """Unsubscribe (by closing) and hand over what was held."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join()
        held, self.held = self.held, []
        return held


def start_early(opts, broker) -> EarlyDiscover | None:
    """An EarlyDiscover for this server, or None where a bare socket cannot log in."""
    if broker is None or opts.tls_cert or opts.accounts_file:
        return None
    try:
        return EarlyDiscover(opts.host, broker.port, f"_STAN.discover.{opts.cluster_id}",
                             user=opts.user, password=opts.password, token=opts.token).start()
    except OSError as e:
        log.debug("no early discover subscription: %s", e)
        return None
