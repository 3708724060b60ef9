"""Quotas per identity: what one user may hold and how fast it may go.

STAN's limits are per channel and per server, so one identity could take
what all share: every subscription slot of `devices.releases`, unlimited
offline durables, the publish path. With authorization on, every request has
an identity (authz.py), and these quotas bound each one separately:

    subscriptions     live subscriptions, all its sessions together
    durables          durable subscriptions, online or offline
    channels          channels it may create (by publishing or subscribing)
    msgs_per_sec      publishes, a token bucket with BURST_SECONDS of room
    bytes_per_sec     published bytes, the same way
    pending_pubacks   publishes stored but not yet answered
    connects_per_sec  connect requests, the same way

0 means unlimited. A quota hit is an error to that client alone
(`stan: quota: ...`) and costs the others nothing: it is decided from
counters in memory before any JetStream work.

Defaults are per kind of identity (`device`, `service`, `admin`) and can be
changed per kind or per role in the `quotas` section of the `-sc` file:

    {"quotas": {"device": {"msgs_per_sec": 50},
                "listener": {"subscriptions": 200000}}}

A role's entry beats its kind's; a field left out keeps the default.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace

from .authz import Identity

BURST_SECONDS = 5.0  # a bucket holds this many seconds of its rate
# STAN's guids are 22-character NUIDs; a guid is kept by JetStream as the
# Nats-Msg-Id for the duplicate window, so a long one is memory for free.
DEFAULT_MAX_GUID = 64


class QuotaError(ValueError):
    """The quotas section of the limits file is invalid."""


@dataclass(frozen=True)
class Quota:
    subscriptions: int = 0
    durables: int = 0
    channels: int = 0
    msgs_per_sec: float = 0.0
    bytes_per_sec: float = 0.0
    pending_pubacks: int = 0
    connects_per_sec: float = 0.0


# A device holds cfg and releases, publishes events and status: a few of each,
# with room for a reconnect that overlaps its old session. Services act for the
# whole fleet. admin is the operator.
DEFAULT_QUOTAS: dict[str, Quota] = {
    "device": Quota(subscriptions=8, durables=4, channels=4, msgs_per_sec=20,
                    bytes_per_sec=64 * 1024, pending_pubacks=128, connects_per_sec=1),
    "service": Quota(subscriptions=100_000, durables=100_000, channels=0, msgs_per_sec=10_000,
                     bytes_per_sec=16 * 1024 * 1024, pending_pubacks=16_384,
                     connects_per_sec=20),
    "admin": Quota(),
}


class QuotaExceeded(Exception):
    """An identity went over one of its quotas; the text goes to the client."""


def _exceeded(who: Identity, what: str, limit) -> QuotaExceeded:
    return QuotaExceeded(f"stan: quota: {what} for {who.user} (max {limit:g}), retry later"
                         if isinstance(limit, float) else
                         f"stan: quota: too many {what} for {who.user} (max {limit})")


class Bucket:
    """A token bucket: `rate` per second, up to BURST_SECONDS of it saved."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float):
        self.rate = rate
        self.burst = max(rate * BURST_SECONDS, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        # A single item bigger than the whole bucket passes when the bucket is full.
        if self.tokens >= min(n, self.burst):
            self.tokens -= n
            return True
        return False


@dataclass
class Usage:
    """What one identity holds right now."""
    quota: Quota
    durables: set = field(default_factory=set)  # group keys of its durables
    channels: int = 0
    pending: int = 0
    msgs: Bucket | None = None
    bytes: Bucket | None = None
    connects: Bucket | None = None

    def __post_init__(self):
        q = self.quota
        self.msgs = Bucket(q.msgs_per_sec) if q.msgs_per_sec else None
        self.bytes = Bucket(q.bytes_per_sec) if q.bytes_per_sec else None
        self.connects = Bucket(q.connects_per_sec) if q.connects_per_sec else None


class Quotas:
    """The quotas and every identity's usage of them."""

    def __init__(self, table: dict[str, Quota] | None = None):
        self.table = dict(DEFAULT_QUOTAS if table is None else table)
        self.usage: dict[str, Usage] = {}

    def quota_for(self, who: Identity) -> Quota:
        if who.role is not None and who.role in self.table:
            return self.table[who.role]
        kind = "device" if who.device_id is not None else "service"
        return self.table.get(kind, Quota())

    def of(self, who: Identity) -> Usage:
        u = self.usage.get(who.user)
        if u is None:
            u = self.usage[who.user] = Usage(self.quota_for(who))
        return u

    # -- sessions --------------------------------------------------------------

    def admit_connect(self, who: Identity) -> None:
        u = self.of(who)
        if u.connects is not None and not u.connects.take():
            raise _exceeded(who, "connect rate", float(u.quota.connects_per_sec))

    # -- subscriptions -----------------------------------------------------------

    def admit_subscription(self, who: Identity, held: int, durable_key: tuple | None,
                           new_channel: bool) -> None:
        """`held`: its live subscriptions now; `durable_key`: the group key of a
        durable request (None for others); `new_channel`: it would create one."""
        u = self.of(who)
        q = u.quota
        if q.subscriptions and held >= q.subscriptions:
            raise _exceeded(who, "subscriptions", q.subscriptions)
        if durable_key is not None and durable_key not in u.durables and q.durables \
                and len(u.durables) >= q.durables:
            raise _exceeded(who, "durable subscriptions", q.durables)
        if new_channel:
            self.admit_channel(who)

    def durable_added(self, who: Identity, key: tuple) -> None:
        self.of(who).durables.add(key)

    def durable_deleted(self, user: str, key: tuple) -> None:
        u = self.usage.get(user)
        if u is not None:
            u.durables.discard(key)

    # -- channels and publishes -------------------------------------------------

    def admit_channel(self, who: Identity) -> None:
        u = self.of(who)
        if u.quota.channels and u.channels >= u.quota.channels:
            raise _exceeded(who, "channels created", u.quota.channels)
        u.channels += 1

    def admit_publish(self, who: Identity, nbytes: int, new_channel: bool) -> None:
        """Counts the publish as pending; published() ends it."""
        u = self.of(who)
        q = u.quota
        if q.pending_pubacks and u.pending >= q.pending_pubacks:
            raise _exceeded(who, "publishes awaiting their PubAck", q.pending_pubacks)
        if u.msgs is not None and not u.msgs.take():
            raise _exceeded(who, "publish rate (msgs/s)", float(q.msgs_per_sec))
        if u.bytes is not None and not u.bytes.take(nbytes):
            raise _exceeded(who, "publish rate (bytes/s)", float(q.bytes_per_sec))
        if new_channel:
            self.admit_channel(who)
        u.pending += 1

    def published(self, user: str) -> None:
        u = self.usage.get(user) if user else None
        if u is not None and u.pending:
            u.pending -= 1


_FIELDS = {f.name: f.type for f in fields(Quota)}


def parse(raw: dict, where: str) -> dict[str, Quota]:
    """The quota table from the `quotas` section of a limits file."""
    if not isinstance(raw, dict):
        raise QuotaError(f"{where}: quotas must be an object")
    table = dict(DEFAULT_QUOTAS)
    for name, over in raw.items():
        if not isinstance(over, dict):
            raise QuotaError(f"{where}: quotas of {name!r} must be an object")
        unknown = set(over) - set(_FIELDS)
        if unknown:
            raise QuotaError(f"{where}: quotas of {name!r}: unknown {', '.join(sorted(unknown))}")
        for k, v in over.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise QuotaError(f"{where}: quotas of {name!r}: {k} must be a number >= 0")
        base = table.get(name) or table["service"]
        table[name] = replace(base, **over)
    return table


def load(path: str | None) -> dict[str, Quota]:
    """The quota table: the defaults, changed by the `quotas` section of the
    `-sc` file at `path` (which limits.load reads for its own section)."""
    if not path:
        return dict(DEFAULT_QUOTAS)
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise QuotaError(f"cannot read quotas from {path}: {e}") from None
    doc = doc.get("streaming", doc)
    return parse(doc.get("quotas", {}), path)
