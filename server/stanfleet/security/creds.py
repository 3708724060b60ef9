"""`stanfleet creds`: who may connect to the broker, and as what.

    stanfleet creds add-device 3F45        # user device-3F45, a fresh password
    stanfleet creds add-service listener   # user listener, role listener
    stanfleet creds list
    stanfleet creds revoke 3F45            # cut off at once

The store is a directory (default stanfleet-data/security), used by
`stanfleet streaming-server --security-dir DIR`:

    creds.json              users, their kind and role, bcrypt hashes only (0600)
    accounts.conf           the nats-server accounts block made from it (0600)
    stan.secret             the streaming server's own password: it must log in (0600)
    devices/device-ID.json  a device's user and password, for its config.json (0600)
    services/ROLE.json      a service's user and password (0600)
    certs/                  `stanfleet certs init --dir DIR/certs`
    nats-server.pid         written by the embedded nats-server

Every change rewrites accounts.conf and reloads the running nats-server
(SIGHUP): new users can connect, and a revoked user's connections are closed
by the reload, without a restart. Passwords are random, stored only as bcrypt
hashes in what the broker reads, never logged, and written in plaintext once,
to a file only the owner can read.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass

from ..broker import Accounts, NatsUser, reload, write_accounts
from ..defaults import DEFAULT_CLUSTER_ID
from ..errors import CommandError
from .roles import (
    DEVICE_USER,
    ROLES,
    own_account,
    role_publish,
    stan_exports,
    stan_publish,
    stan_requests,
)

DEFAULT_DIR = "stanfleet-data/security"
SERVER_USER = "stan"
# nats-server checks the hash on every connect, and a fleet connects all at
# once after an outage. At cost 11 a check took 0.1-0.8 s of CPU here, and
# 200 simulated devices never all connected: they gave up (5 s timeout) and
# retried faster than nats-server checked. The work factor protects guessable
# passwords; ours are 192 random bits (_new_password), which no number of
# guesses reaches, so the minimum cost gives up nothing. Hashes made at
# another cost keep working (the cost is part of the hash).
BCRYPT_ROUNDS = 4
_DEVICE_ID = re.compile(r"^[A-Za-z0-9]+$")


def _hash(password: str) -> str:
    try:
        import bcrypt
    except ImportError:  # a declared dependency; say so rather than trace back
        raise CommandError("the 'bcrypt' package is needed for credentials") from None
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def device_user(device_id: str, cluster_id: str) -> tuple[list[str], list[str], list[str]]:
    """(publish, subscribe, subscribe deny) of device-<ID> at the broker: the
    STAN requests, publishing only to its own channels, and its own inboxes.
    The streaming server checks the same rules again (authz.py)."""
    c = cluster_id
    publish = stan_requests(c) + [stan_publish(c, f"devices.{device_id}.events"),
                                  stan_publish(c, f"devices.{device_id}.status")]
    return publish, _own_inboxes(f"device-{device_id}"), _others_acks(c)


def _account_entry(user: str, own: bool) -> dict:
    return {"account": own_account(user)} if own else {}


def _own_inboxes(user: str) -> list[str]:
    # Our clients (CPython and firmware) take PubAcks under their inbox prefix
    # too, so a user reads nothing but its own inboxes.
    return [f"_INBOX.{user}.>"]


def _others_acks(cluster_id: str) -> list[str]:
    # Other clients' STAN Acks travel on `_STAN.acks.<cluster>.<sub>` in the same
    # account: a wildcard subscription must not see them.
    return [f"_STAN.acks.{cluster_id}.>"]


@dataclass
class Store:
    directory: str = DEFAULT_DIR
    # The streaming cluster the broker permissions name; None: the one stored.
    cluster_id: str | None = None
    reloaded: int | None = None  # pid of the nats-server the last change reloaded

    def path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    @property
    def accounts_file(self) -> str:
        return self.path("accounts.conf")

    @property
    def pid_file(self) -> str:
        return self.path("nats-server.pid")

    @property
    def certs_dir(self) -> str:
        return self.path("certs")

    # -- the registry ---------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """One change at a time, across processes."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> dict:
        try:
            with open(self.path("creds.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"users": {}, "revoked": {}, "cluster_id": self.cluster_id or DEFAULT_CLUSTER_ID}

    def _save(self, data: dict) -> None:
        _write_private(self.path("creds.json"), json.dumps(data, indent=2, sort_keys=True) + "\n")

    def users(self) -> dict:
        return self._load()["users"]

    def revoked(self) -> dict:
        return self._load().get("revoked", {})

    # -- the streaming server's own login -------------------------------------

    def server_login(self) -> tuple[str, str]:
        """(user, password) the streaming server connects with; creates the store
        (and its accounts file) on first use."""
        with self._locked():
            secret = self.path("stan.secret")
            data = self._load()
            moved = self.cluster_id and data.get("cluster_id") != self.cluster_id
            if moved:
                data["cluster_id"] = self.cluster_id
            if not os.path.exists(secret) or SERVER_USER not in data["users"]:
                password = _new_password()
                data["users"][SERVER_USER] = {"kind": "server", "hash": _hash(password),
                                              "created": time.time()}
                _write_private(secret, password + "\n")
                self._save(data)
                self._publish(data)
            elif moved or not os.path.exists(self.accounts_file):
                self._save(data)
                self._publish(data)
            with open(secret) as f:
                return SERVER_USER, f.read().strip()

    # -- changes ----------------------------------------------------------------

    def add_device(self, device_id: str, *, replace: bool = False,
                   own_account: bool = False) -> str:
        """Returns the path of the device's credentials file. own_account: alone
        in an account, for the official STAN clients (docs/security-design.md)."""
        if not _DEVICE_ID.match(device_id):
            raise CommandError(f"invalid device ID {device_id!r}: letters and digits only")
        user = f"device-{device_id}"
        password = _new_password()
        creds = {"device_id": device_id, "user": user, "password": password,
                 "inbox_prefix": "_INBOX" if own_account else f"_INBOX.{user}"}
        return self._add(user, {"kind": "device", "device_id": device_id,
                                **_account_entry(user, own_account)},
                         password, self.path("devices", f"{user}.json"), creds, replace)

    def add_devices(self, device_ids: list[str]) -> list[str]:
        """add_device for many new devices with one registry write and one broker
        reload: one at a time, 10,000 devices rewrote both 10,000 times."""
        self.server_login()
        out = []
        with self._locked():
            data = self._load()
            for device_id in device_ids:
                if not _DEVICE_ID.match(device_id):
                    raise CommandError(f"invalid device ID {device_id!r}: letters and digits only")
                user = f"device-{device_id}"
                if user in data["users"]:
                    raise CommandError(f"{user} already has credentials")
                password = _new_password()
                path = self.path("devices", f"{user}.json")
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                _write_private(path, json.dumps(
                    {"device_id": device_id, "user": user, "password": password,
                     "inbox_prefix": f"_INBOX.{user}"}, indent=2) + "\n")
                data["users"][user] = {"kind": "device", "device_id": device_id,
                                       "hash": _hash(password), "created": time.time()}
                data.get("revoked", {}).pop(user, None)
                out.append(path)
            self._save(data)
            self._publish(data)
        return out

    def add_service(self, role: str, *, replace: bool = False, own_account: bool = False) -> str:
        if role not in ROLES:
            raise CommandError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        password = _new_password()
        creds = {"user": role, "password": password,
                 "inbox_prefix": "_INBOX" if own_account else f"_INBOX.{role}"}
        return self._add(role, {"kind": "service", "role": role,
                                **_account_entry(role, own_account)}, password,
                         self.path("services", f"{role}.json"), creds, replace)

    def _add(self, user: str, entry: dict, password: str, out: str, creds: dict,
             replace: bool) -> str:
        self.server_login()  # the store and the server's own user exist first
        with self._locked():
            data = self._load()
            if user in data["users"] and not replace:
                raise CommandError(f"{user} already has credentials (--replace gives it a "
                                   "new password; the old one stops working)")
            data["users"][user] = {**entry, "hash": _hash(password), "created": time.time()}
            data.get("revoked", {}).pop(user, None)
            os.makedirs(os.path.dirname(out), mode=0o700, exist_ok=True)
            _write_private(out, json.dumps(creds, indent=2) + "\n")
            self._save(data)
            self._publish(data)
        return out

    def revoke(self, name: str) -> str:
        """Remove a device (by ID or user) or a service (by role). Returns the user."""
        with self._locked():
            data = self._load()
            user = name if name in data["users"] else f"device-{name}"
            if user == SERVER_USER or user not in data["users"]:
                raise CommandError(f"no credentials for {name!r}")
            entry = data["users"].pop(user)
            data.setdefault("revoked", {})[user] = {"kind": entry.get("kind"),
                                                    "revoked": time.time()}
            sub = "devices" if entry.get("kind") == "device" else "services"
            base = f"{user}.json" if sub == "devices" else f"{entry.get('role', user)}.json"
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path(sub, base))
            self._save(data)
            self._publish(data)
        return user

    # -- the broker's view ----------------------------------------------------------

    def accounts(self, data: dict | None = None) -> Accounts:
        data = data or self._load()
        cid = data.get("cluster_id") or DEFAULT_CLUSTER_ID
        stan, devices, services, own = [], [], [], {}
        for user, e in sorted(data["users"].items()):
            kind = e.get("kind")
            if kind == "server":
                stan.append(NatsUser(user, e["hash"]))
                continue
            if kind == "device" and DEVICE_USER.match(user):
                pub, sub, deny = device_user(e["device_id"], cid)
                into = devices
            elif kind == "service":
                pub, sub, deny = role_publish(e["role"], cid), _own_inboxes(user), _others_acks(cid)
                into = services
            else:
                continue
            if e.get("account") == own_account(user):
                # Alone in its account: every inbox and ack subject there is its own.
                sub, deny, into = ["_INBOX.>", "_STAN.acks.>"], [], own.setdefault(e["account"], [])
            into.append(NatsUser(user, e["hash"], pub, sub, deny, allow_responses=True))
        return Accounts(stan=stan, devices=devices, services=services, exports=stan_exports(cid),
                        own=own)

    def _publish(self, data: dict) -> None:
        """Write the accounts file and have a running nats-server reload it."""
        write_accounts(self.accounts_file, self.accounts(data))
        self.reloaded = reload(self.pid_file)


# -- command line -------------------------------------------------------------------


OWN_ACCOUNT_HELP = ("an account of its own, for the official STAN clients (Go, Node, Python), "
                    "which pick their inboxes and PubAck subjects themselves")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help="credentials store, as given to streaming-server --security-dir "
                        "(default: %(default)s)")
    p.add_argument("--cluster-id", default=None,
                   help="streaming cluster ID the permissions name (default: the one the "
                        f"store was made for, else {DEFAULT_CLUSTER_ID}; the streaming server "
                        "sets its own when it starts)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = sub.add_parser("add-device", help="credentials for device-<ID>")
    d.add_argument("device_id", metavar="ID")
    d.add_argument("--replace", action="store_true", help="give an existing device a new password")
    d.add_argument("--own-account", action="store_true", help=OWN_ACCOUNT_HELP)
    s = sub.add_parser("add-service", help="credentials for a service role")
    s.add_argument("role", choices=sorted(ROLES))
    s.add_argument("--replace", action="store_true", help="give the role a new password")
    s.add_argument("--own-account", action="store_true", help=OWN_ACCOUNT_HELP)
    sub.add_parser("list", help="who has credentials")
    r = sub.add_parser("revoke", help="cut a device (ID) or a service (role) off at once")
    r.add_argument("name", metavar="ID|ROLE")


def _reload_note(store: Store) -> str:
    if store.reloaded:
        return f"nats-server (pid {store.reloaded}) reloaded"
    return ("no embedded nats-server running: the change applies when it starts "
            f"(an external nats-server must include {store.accounts_file} and be reloaded)")


def run(args: argparse.Namespace) -> int:
    store = Store(args.dir, cluster_id=args.cluster_id)
    if args.action == "add-device":
        out = store.add_device(args.device_id, replace=args.replace,
                               own_account=args.own_account)
        print(f"device-{args.device_id}: password written to {out} (mode 0600; put user and "
              f"password into the device's config.json)\n{_reload_note(store)}")
    elif args.action == "add-service":
        out = store.add_service(args.role, replace=args.replace, own_account=args.own_account)
        print(f"{args.role}: password written to {out} (mode 0600)\n{_reload_note(store)}")
    elif args.action == "revoke":
        user = store.revoke(args.name)
        print(f"{user} revoked\n{_reload_note(store)}")
    else:
        for user, e in sorted(store.users().items()):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("created", 0)))
            print(f"{user:24} {e.get('kind', '?'):8} {e.get('role', ''):16} added {when}")
        for user, e in sorted(store.revoked().items()):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.get("revoked", 0)))
            print(f"{user:24} {e.get('kind', '?'):8} {'':16} revoked {when}")
    return 0
