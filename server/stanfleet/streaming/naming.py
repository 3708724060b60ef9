"""Names on the wire and in JetStream.

STAN channel names are NATS subjects without wildcards; JetStream stream and
consumer names may not contain '.', '*', '>' or whitespace. We map one to the
other with a reversible escape (anything outside [A-Za-z0-9-] becomes _XX) so
that two channels can never share a stream, and so `nats stream ls` stays
readable enough for an operator.
"""

from __future__ import annotations

import re

# JetStream keeps names as file names; stay well under common limits.
_MAX_JS_NAME = 200
_SAFE = re.compile(rb"[A-Za-z0-9-]")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_TOKEN_BAD = re.compile(r"[\s*>]")


class InvalidName(ValueError):
    """A channel, client ID, inbox or durable name the STAN protocol does not allow."""


def escape(text: str) -> str:
    out = []
    for b in text.encode():
        ch = bytes((b,))
        out.append(ch.decode() if _SAFE.fullmatch(ch) else "_%02X" % b)
    return "".join(out)


def unescape(name: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "_":
            raw.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += name[i].encode()
            i += 1
    return raw.decode()


def js_name(*parts: str) -> str:
    """A JetStream-safe name from parts; long names are shortened with a hash."""
    name = "_".join(parts)
    if len(name) > _MAX_JS_NAME:
        import hashlib  # here: hashlib is ~2.5 ms of a start that must be fast (issue 13)

        digest = hashlib.sha256(name.encode()).hexdigest()[:24]
        name = name[: _MAX_JS_NAME - 25] + "-" + digest
    return name


def check_channel(channel: str) -> None:
    """A channel is a literal NATS subject: dot-separated non-empty tokens, no wildcards."""
    if not channel:
        raise InvalidName("channel name is empty")
    if len(channel) > 1024:
        raise InvalidName("channel name is too long")
    for token in channel.split("."):
        if not token or _TOKEN_BAD.search(token):
            raise InvalidName(f"invalid channel name {channel!r}")


# Subjects of the server's own back end ($JS.API, $SYS, our stores and request
# subjects): an inbox there would have the server store into a channel or call
# the JetStream API with its own rights.
_RESERVED = ("$", "_STAN.")


def check_subject(subject: str, what: str) -> None:
    """An inbox the server will publish to: a literal subject outside the reserved ones."""
    try:
        check_channel(subject)
    except InvalidName:
        raise InvalidName(f"invalid {what} {subject!r}") from None
    if subject.startswith(_RESERVED):
        raise InvalidName(f"invalid {what} {subject!r}: reserved subject")


def check_client_id(client_id: str) -> None:
    # Same rule as the original server: letters, digits, '-' and '_' only.
    if not client_id or not _CLIENT_ID.match(client_id):
        raise InvalidName(f"invalid clientID {client_id!r}: only a-z, A-Z, 0-9, '-' and '_'")


def state_buckets(cluster_id: str) -> tuple[str, str]:
    """The KV buckets of client and subscription registrations (state.py)."""
    base = f"STAN_{escape(cluster_id)}"
    return f"{base}_clients", f"{base}_subs"


class Subjects:
    """The subjects one streaming cluster uses on the NATS side."""

    def __init__(self, cluster_id: str):
        self.cluster_id = cluster_id
        cid = cluster_id
        self.discover = f"_STAN.discover.{cid}"
        self.pings = f"_STAN.discover.{cid}.pings"
        self.pub_prefix = f"_STAN.pub.{cid}"
        self.sub = f"_STAN.sub.{cid}"
        self.unsub = f"_STAN.unsub.{cid}"
        self.subclose = f"_STAN.subclose.{cid}"
        self.close = f"_STAN.close.{cid}"
        self.acks_prefix = f"_STAN.acks.{cid}"
        # Internal: JetStream stores and deliveries. Clients never see these.
        self.store_prefix = f"_STAN.store.{escape(cid)}"
        self.js_ack_prefix = f"_STAN.jsack.{escape(cid)}"
        self.deliver_prefix = f"_STAN.dlv.{escape(cid)}"
        self.stream_prefix = f"STAN_{escape(cid)}_"

    def stream_for(self, channel: str) -> str:
        return js_name(self.stream_prefix + escape(channel))

    def store_subject(self, channel: str) -> str:
        return f"{self.store_prefix}.{channel}"

    def ack_inbox(self, sub_id: str) -> str:
        return f"{self.acks_prefix}.{sub_id}"
