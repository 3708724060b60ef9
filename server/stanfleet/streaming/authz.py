"""Who may do what: per-identity rules for STAN requests.

The identity comes from the `Nats-Request-Info` header that nats-server puts
on every request crossing into the streaming server's account through an
import with `share: true` (see docs/security-design.md); a client's forged
copy is replaced by the server's. STAN never had per-channel authorization;
these rules add it:

- a device `device-<ID>` uses clientID `device-<ID>` only, publishes only to
  `devices.<ID>.events` and `devices.<ID>.status`, subscribes only to
  `devices.<ID>.cfg` and `devices.releases`;
- a service user gets the rights of its role, `admin` gets every right;
- every user's inboxes start with `_INBOX.<user>.` (the broker lets it
  subscribe there and nowhere else), and a session may only be closed,
  pinged or unsubscribed by the identity that opened it.

`Authorizer` applies the rules on the server's request paths and caches the
decisions the publish hot path needs.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass

from ..security.roles import (
    ADMIN,
    DEVICE_USER,
    DEVICES_ACCOUNT,
    INBOX_IMPORTS,
    OWN_INBOX_IMPORT,
    ROLES,
    SERVICES_ACCOUNT,
    own_account,
)

# Bounds on the caches: the header text changes per connection (and when the
# broker re-measures its RTT), so the caches are cleared, not grown, past these.
MAX_IDENTITIES = 4096
MAX_DECISIONS = 65536


class Denied(Exception):
    """The identity may not do this; the message goes back to the client."""


@dataclass(frozen=True)
class Identity:
    account: str
    user: str

    @property
    def device_id(self) -> str | None:
        m = DEVICE_USER.match(self.user)
        return m.group(1) if m else None

    @property
    def role(self) -> str | None:
        return self.user if self.user in ROLES else None

    @property
    def alone(self) -> bool:
        """In an account of its own: nobody else can see its inboxes there."""
        return self.account == own_account(self.user)

    @property
    def inbox_prefix(self) -> str:
        return "_INBOX." if self.alone else f"_INBOX.{self.user}."


def identity_of(headers: dict | None) -> Identity | None:
    raw = (headers or {}).get("Nats-Request-Info")
    if not raw:
        return None
    try:
        info = json.loads(raw)
        return Identity(account=str(info.get("acc", "")), user=str(info.get("user", "")))
    except (ValueError, AttributeError):
        return None


def _match(patterns, channel: str) -> bool:
    # fnmatch's '*' also matches dots; STAN tokens must stay whole.
    return any(p == ">" or (fnmatch.fnmatchcase(channel, p) and channel.count(".") == p.count("."))
               for p in patterns)


def _denied(text: str) -> Denied:
    return Denied(f"stan: not authorized: {text}")


def check_client_id(who: Identity, client_id: str) -> None:
    if who.device_id is not None:
        if client_id != who.user:
            raise _denied(f"{who.user} may only connect as clientID {who.user}")
        return
    if who.role is None:
        raise _denied(f"{who.user!r} has no role")
    # A device's clientID is its identity: no service takes it over.
    if who.role != ADMIN and DEVICE_USER.match(client_id):
        raise _denied(f"{who.user} may not use a device's clientID {client_id}")


def check_publish(who: Identity, channel: str) -> None:
    dev = who.device_id
    if dev is not None:
        if channel in (f"devices.{dev}.events", f"devices.{dev}.status"):
            return
    elif who.role and _match(ROLES[who.role][0], channel):
        return
    raise _denied(f"{who.user} may not publish to {channel}")


def check_inbox(who: Identity, inbox: str, what: str = "inbox") -> None:
    if not inbox.startswith(who.inbox_prefix):
        raise _denied(f"{who.user}'s {what} must start with {who.inbox_prefix}")


def check_subscribe(who: Identity, channel: str, inbox: str) -> None:
    dev = who.device_id
    if dev is not None:
        if channel not in (f"devices.{dev}.cfg", "devices.releases"):
            raise _denied(f"{who.user} may not subscribe to {channel}")
    elif not (who.role and _match(ROLES[who.role][1], channel)):
        raise _denied(f"{who.user} may not subscribe to {channel}")
    check_inbox(who, inbox)


def check_owns(who: Identity, client_id: str, owner: str | None = None) -> None:
    """Close, unsubscribe, ping, ack: only for one's own session.

    `owner` is the user that opened the session, when known."""
    if who.role == ADMIN:
        return
    if owner is not None:
        if owner != who.user:
            raise _denied(f"{who.user} may not act for {client_id}")
    elif who.device_id is not None and client_id != who.user:
        raise _denied(f"{who.user} may not act for {client_id}")


class Authorizer:
    """The rules as the server applies them, with the state they need: who
    owns each session, and cached decisions for the publish hot path."""

    def __init__(self, inbox_imports: dict[str, str] | None = None):
        self.inbox_imports = dict(INBOX_IMPORTS if inbox_imports is None else inbox_imports)
        self.owners: dict[str, str] = {}  # clientID -> user that opened the session
        self.sessions: dict[str, set[str]] = {}  # user -> its clientIDs (quotas, revocation)
        self._identities: dict[str, Identity] = {}
        self._publish: dict[tuple[str, str], str] = {}

    def identify(self, headers: dict | None) -> Identity:
        """The caller's identity from the broker's header. Raises Denied."""
        raw = headers.get("Nats-Request-Info") if headers else None
        if not raw:
            raise _denied("request carries no identity (Nats-Request-Info)")
        who = self._identities.get(raw)
        if who is None:
            who = self._parse(raw)
            if len(self._identities) >= MAX_IDENTITIES:
                self._identities.clear()
            self._identities[raw] = who
        return who

    def _parse(self, raw: str) -> Identity:
        who = identity_of({"Nats-Request-Info": raw})
        if who is None or not who.user:
            raise _denied("unreadable identity")
        if who.alone:
            return who  # the broker put this user alone in the account named after it
        if who.account not in self.inbox_imports:
            raise _denied(f"account {who.account!r} has no access")
        # Defence in depth: a name only means something in its own account.
        if who.device_id is not None and who.account != DEVICES_ACCOUNT:
            raise _denied(f"{who.user} is not in account {DEVICES_ACCOUNT}")
        if who.role is not None and who.account != SERVICES_ACCOUNT:
            raise _denied(f"{who.user} is not in account {SERVICES_ACCOUNT}")
        return who

    def inbox_for(self, who: Identity, inbox: str) -> str:
        """Where the streaming server reaches `who`'s inbox from its own account."""
        if who.alone:
            return f"{OWN_INBOX_IMPORT}{who.account}.{inbox}"
        return self.inbox_imports[who.account] + inbox

    def check_owns(self, who: Identity, client_id: str) -> None:
        check_owns(who, client_id, self.owners.get(client_id))

    def claim(self, client_id: str, who: Identity) -> None:
        self.release(client_id)
        self.owners[client_id] = who.user
        self.sessions.setdefault(who.user, set()).add(client_id)

    def release(self, client_id: str) -> None:
        user = self.owners.pop(client_id, None)
        ids = self.sessions.get(user) if user is not None else None
        if ids is not None:
            ids.discard(client_id)
            if not ids:
                del self.sessions[user]

    def publish_error(self, headers: dict | None, client_id: str, channel: str) -> str:
        """'' if the publisher may publish to channel as client_id, else the refusal."""
        try:
            who = self.identify(headers)
            check_owns(who, client_id, self.owners.get(client_id))
        except Denied as e:
            return str(e)
        key = (who.user, channel)
        err = self._publish.get(key)
        if err is None:
            try:
                check_publish(who, channel)
                err = ""
            except Denied as e:
                err = str(e)
            if len(self._publish) >= MAX_DECISIONS:
                self._publish.clear()
            self._publish[key] = err
        return err
