"""Identities and roles: who a broker user is, and what each role may do.

The credentials store (`creds`) writes broker permissions from these tables
and the streaming server (`streaming.authz`) enforces the same tables on STAN
requests, so both sides import them from here. docs/security-design.md has
the full matrix.
"""

import re

DEVICE_USER = re.compile(r"^device-([A-Za-z0-9]+)$")
ADMIN = "admin"
ANY = (">",)

# role -> (publish patterns, subscribe patterns); fnmatch-style, '*' = one token's text
ROLES = {
    "listener": ((), ("devices.*.events", "devices.*.status", "stanfleet.channels")),
    "config-manager": (("devices.*.cfg",), ("devices.*.status", "stanfleet.channels")),
    "release-manager": (("devices.releases",), ("devices.*.status", "stanfleet.channels")),
    # A person at the dashboard who changes config and releases (and sees everything).
    "operator": (("devices.*.cfg", "devices.releases"),
                 ("devices.*.status", "stanfleet.channels")),
    ADMIN: (ANY, ANY),
}

# Accounts the identities live in (docs/security-design.md), and the prefix
# under which the streaming server's account imports each one's inboxes.
DEVICES_ACCOUNT = "DEVICES"
SERVICES_ACCOUNT = "SERVICES"
INBOX_IMPORTS = {DEVICES_ACCOUNT: "_DEV.", SERVICES_ACCOUNT: "_SVC."}
# An identity may instead live alone in an account of its own (`stanfleet creds
# ... --own-account`), for clients that choose their inboxes themselves (the
# official Go/Node/Python STAN clients: `_INBOX.<nuid>`, PubAcks on
# `_STAN.acks.<nuid>`): the account, not a subject prefix, keeps others out.
OWN_ACCOUNT_PREFIX = "U_"
OWN_INBOX_IMPORT = "_ACC."


def own_account(user: str) -> str:
    return OWN_ACCOUNT_PREFIX + user


def stan_requests(cluster_id: str) -> list[str]:
    """The streaming server's request subjects a client may send to: connect,
    pings, subscribe, unsubscribe, subscription close, close, and the Acks of
    its subscriptions. Everything else under `_STAN.` (stores, deliveries,
    JetStream acks) is the server's own and stays inside its account."""
    c = cluster_id
    return [f"_STAN.discover.{c}", f"_STAN.discover.{c}.pings", f"_STAN.sub.{c}",
            f"_STAN.unsub.{c}", f"_STAN.subclose.{c}", f"_STAN.close.{c}", f"_STAN.acks.{c}.*"]


def stan_publish(cluster_id: str, channel: str) -> str:
    """The subject a PubMsg to `channel` (a NATS pattern) travels on."""
    return f"_STAN.pub.{cluster_id}.{channel}"


def stan_exports(cluster_id: str) -> list[str]:
    """What the streaming server's account offers the client accounts: the
    requests and every channel's publish subject, nothing else."""
    return stan_requests(cluster_id) + [stan_publish(cluster_id, ">")]


def role_publish(role: str, cluster_id: str) -> list[str]:
    """Broker publish permissions of a service role: the STAN requests and the
    publish subjects of exactly the channels the role may publish to."""
    return stan_requests(cluster_id) + [stan_publish(cluster_id, p) for p in ROLES[role][0]]
