"""Who is at the dashboard, and what they may change.

Login takes a service role's credentials (`stanfleet creds add-service ROLE`,
the files under <security>/services/ROLE.json): the password is checked
against the creds store's bcrypt hash. What a role may change follows the
same table the broker and the streaming server enforce (security/roles.py):
a role that may publish `devices.<ID>.cfg` may change config, one that may
publish `devices.releases` may publish releases. `listener` may neither.

The session is a cookie signed with HMAC-SHA256 (a per-installation secret,
0600, in the security directory); it carries the role, an expiry and a CSRF
token that every change must echo in the X-CSRF-Token header.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from ..security.creds import Store
from ..security.roles import ROLES

COOKIE = "stanfleet_session"
SESSION_SECONDS = 12 * 3600
SECRET_FILE = "dashboard.secret"


class AuthError(Exception):
    """Login refused: unknown user, revoked, wrong password."""


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: float

    @property
    def can_config(self) -> bool:
        return _may_publish(self.user, "devices.D.cfg")

    @property
    def can_release(self) -> bool:
        return _may_publish(self.user, "devices.releases")

    def as_json(self) -> dict:
        return {"user": self.user, "role": self.user, "can_config": self.can_config,
                "can_release": self.can_release, "csrf": self.csrf}


def _may_publish(role: str, channel: str) -> bool:
    patterns = ROLES.get(role, ((), ()))[0]
    return any(fnmatch.fnmatchcase(channel, p) or p == ">" for p in patterns)


def check_password(security_dir: str, user: str, password: str) -> None:
    """Raise AuthError unless `user` is a service role with this password."""
    import bcrypt

    entry = Store(security_dir).users().get(user)
    if not entry or entry.get("kind") != "service" or user not in ROLES:
        bcrypt.checkpw(b"x", bcrypt.hashpw(b"y", bcrypt.gensalt(4)))  # same work either way
        raise AuthError("unknown user or wrong password")
    if not bcrypt.checkpw(password.encode(), entry["hash"].encode()):
        raise AuthError("unknown user or wrong password")


def load_secret(security_dir: str) -> bytes:
    """The cookie-signing key; made on first use, kept so sessions survive restarts."""
    path = os.path.join(security_dir, SECRET_FILE)
    try:
        with open(path, "rb") as f:
            return bytes.fromhex(f.read().decode().strip())
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        return key


class Sessions:
    def __init__(self, secret: bytes):
        self.secret = secret

    def new(self, user: str) -> tuple[Session, str]:
        s = Session(user, secrets.token_urlsafe(24), float(int(time.time()) + SESSION_SECONDS))
        body = base64.urlsafe_b64encode(json.dumps(
            {"u": s.user, "c": s.csrf, "e": int(s.expires)}).encode()).decode()
        return s, f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if absent, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body, sig = cookie.rsplit(".", 1)
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(body.encode()))
            s = Session(str(doc["u"]), str(doc["c"]), float(doc["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return s if s.expires > time.time() else None

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()


def open_session() -> Session:
    """Without security (`up --insecure`) there is no login: everyone may change."""
    return Session("admin", "insecure", float("inf"))
