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
