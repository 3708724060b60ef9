"""A secured fleet for the negative tests: real nats-server with the STAN /
DEVICES / SERVICES accounts made by `stanfleet.security.creds`, TLS with our own CA,
and the streaming server with authorization on (--security-dir)."""

from __future__ import annotations

import argparse
import asyncio
import json

import nats
import pytest
from stanfleet.client import Client
from stanfleet.security import creds
from stanfleet.security.certs import client_context, init
from stanfleet.streaming import StreamingServer
from stanfleet.streaming.options import add_arguments, from_args

from ..streaming.rawstan import RawStan

DEVICES = ("3F45", "9999")
ROLES = ("listener", "config-manager", "release-manager", "admin")


class Fleet:
    def __init__(self, server: StreamingServer, store: creds.Store, ca: str):
        self.server = server
        self.store = store
        self.ca = ca
        self.url = server.nats_url
        self.cluster_id = server.opts.cluster_id
        self._open: list = []

    def password(self, user: str) -> str:
        sub = "devices" if user.startswith("device-") else "services"
        with open(self.store.path(sub, f"{user}.json")) as f:
            return json.load(f)["password"]

    async def nats(self, user: str, password: str | None = None, **kw):
        """A TLS connection as `user`; its async errors (permission violations)
        land in `nc.errors`."""
        errors: asyncio.Queue = asyncio.Queue()

        async def on_error(e):
            await errors.put(e)

        kw.setdefault("allow_reconnect", False)
        nc = await nats.connect(self.url, tls=client_context(self.ca), tls_hostname="localhost",
                                user=user, password=password or self.password(user),
                                inbox_prefix=f"_INBOX.{user}", error_cb=on_error,
                                connect_timeout=5, max_reconnect_attempts=0, **kw)
        nc.errors = errors
        self._open.append(nc)
        return nc

    async def stan(self, user: str, client_id: str | None = None) -> Client:
        nc = await self.nats(user)
        sc = Client()
        await sc.connect(self.cluster_id, client_id or user, nats=nc)
        self._open.append(sc)
        return sc

    async def raw(self, user: str, client_id: str | None = None, *,
                  answer_heartbeats: bool = True) -> RawStan:
        """A bare STAN peer logged in as `user`, claiming `client_id`."""
        nc = await self.nats(user)
        c = RawStan(nc, self.cluster_id, client_id or user)
        c.hb_inbox = f"_INBOX.{user}.hb.{c.conn_id.hex()}"
        if answer_heartbeats:
            c.hb_sub = await nc.subscribe(c.hb_inbox, cb=c._on_hb)
        # Known request subjects, so a refused connect does not stop the attacks.
        s = self.server.subjects
        c.resp = type("Resp", (), dict(
            pub_prefix=s.pub_prefix, sub_requests=s.sub, unsub_requests=s.unsub,
            close_requests=s.close, sub_close_requests=s.subclose, ping_requests=s.pings))()
        return c

    async def close(self) -> None:
        for x in reversed(self._open):
            try:
                await x.close()
            except Exception:
                pass


def _server_args(security_dir: str, data_dir: str, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--security-dir", security_dir, "-store", "memory", "-a", "127.0.0.1",
                         "-p", "-1", "-dir", data_dir, "-hbi", "1s", "-hbt", "1s", *extra])


@pytest.fixture
async def make_fleet(tmp_path, monkeypatch):
    """Factory: two devices and one user per service role. loose=True gives
    devices and services the broad broker permissions `_STAN.>`, so a
    refusal must come from the streaming server's own checks."""
    started = []

    async def start(loose: bool = False, extra: tuple = (), own: tuple = ()) -> Fleet:
        monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)  # the hashing, not the test, is slow
        if loose:
            real = creds.device_user
            monkeypatch.setattr(creds, "device_user",
                                lambda dev, cid: (["_STAN.>"],) + real(dev, cid)[1:])
            monkeypatch.setattr(creds, "role_publish", lambda role, cid: ["_STAN.>"])
        sec = tmp_path / "security"
        certs = init(str(sec / "certs"), ["localhost", "127.0.0.1"])
        store = creds.Store(str(sec))
        for dev in DEVICES:
            store.add_device(dev)
        for dev in own:  # alone in an account each (official clients)
            store.add_device(dev, own_account=True)
        for role in ROLES:
            store.add_service(role)
        server = StreamingServer(from_args(_server_args(str(sec), str(tmp_path / "data"), *extra)))
        await server.start()
        f = Fleet(server, store, certs.ca)
        started.append(f)
        return f

    yield start
    for f in started:
        await f.close()
        await f.server.stop()


@pytest.fixture
async def fleet(make_fleet):
    """Broker permissions as `stanfleet creds` makes them, and the server's checks."""
    return await make_fleet()


@pytest.fixture
async def loose_fleet(make_fleet):
    """Only the streaming server's checks stand between a device and the channels."""
    return await make_fleet(loose=True)
