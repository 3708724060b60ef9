"""Who may do what: per-identity rules for STAN requests.

The identity comes from the `Nats-Request-Info` header that nats-server puts
on every request crossing into the streaming server's account (see
docs/security-design.md); clients cannot forge it. STAN never had
per-channel authorization; these rules add it:

- a device `device-<ID>` uses clientID `device-<ID>` only, publishes only to
  `devices.<ID>.events` and `devices.<ID>.status`, subscribes only to
  `devices.<ID>.cfg` and `devices.releases`, and its inboxes start with
  `_INBOX.device-<ID>.`;
- a service user gets the rights of its role.

Not wired into the server yet (issue 6).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass

DEVICE_USER = re.compile(r"^device-([A-Za-z0-9]+)$")

# role -> (publish patterns, subscribe patterns); fnmatch-style, '*' = one token's text
ROLES = {
    "listener": ((), ("devices.*.events", "devices.*.status", "stanfleet.channels")),
    "config-manager": (("devices.*.cfg",), ("devices.*.status", "stanfleet.channels")),
    "release-manager": (("devices.releases",), ("devices.*.status", "stanfleet.channels")),
}


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
    return any(fnmatch.fnmatchcase(channel, p) and channel.count(".") == p.count(".")
               for p in patterns)


def check_client_id(who: Identity, client_id: str) -> None:
    if who.device_id is not None and client_id != who.user:
        raise Denied(f"stan: {who.user} may only connect as clientID {who.user}")
    if who.device_id is None and who.role is None:
        raise Denied(f"stan: {who.user!r} has no role")


def check_publish(who: Identity, channel: str) -> None:
    dev = who.device_id
    if dev is not None:
        if channel in (f"devices.{dev}.events", f"devices.{dev}.status"):
            return
    elif who.role and _match(ROLES[who.role][0], channel):
        return
    raise Denied(f"stan: {who.user} may not publish to {channel}")


def check_subscribe(who: Identity, channel: str, inbox: str) -> None:
    dev = who.device_id
    if dev is not None:
        if channel not in (f"devices.{dev}.cfg", "devices.releases"):
            raise Denied(f"stan: {who.user} may not subscribe to {channel}")
        if not inbox.startswith(f"_INBOX.{who.user}."):
            raise Denied(f"stan: {who.user} must use inboxes under _INBOX.{who.user}.")
        return
    if who.role and _match(ROLES[who.role][1], channel):
        return
    raise Denied(f"stan: {who.user} may not subscribe to {channel}")


def check_owns(who: Identity, client_id: str) -> None:
    """Close, unsubscribe, ping, ack: only for one's own session."""
    if who.device_id is not None and client_id != who.user:
        raise Denied(f"stan: {who.user} may not act for {client_id}")
