"""Finding 8: a revoked device's STAN session stayed registered, showed
online for about ten minutes and was restored after a restart."""

from __future__ import annotations

import argparse

import pytest
from stanfleet.security import creds
from stanfleet.security.certs import init
from stanfleet.streaming import StreamingServer
from stanfleet.streaming.options import add_arguments, from_args

from ..waiting import eventually
from .conftest import Fleet


async def test_revoke_ends_the_session_at_once(fleet):
    victim = await fleet.stan("device-9999")
    await victim.subscribe("devices.9999.cfg", cb=lambda m: None, durable_name="cfg")
    other = await fleet.raw("device-3F45")
    assert (await other.connect()).error == ""
    clients = fleet.server.clients.clients
    assert "device-9999" in clients
    fleet.store.revoke("9999")

    async def gone() -> bool:
        return "device-9999" not in clients

    async def forgotten() -> bool:
        # The session ends in memory first; its subscriptions, then its stored
        # record, go after it (awaiting JetStream): a restart must not restore it.
        return "device-9999" not in {r["client_id"] for r in
                                     await fleet.server.state.load_clients()}

    await eventually(gone, timeout=2)  # the store is looked at every 0.25 s
    assert not fleet.server.subs.by_client.get("device-9999")
    await eventually(forgotten, timeout=5)
    # Nobody else lost anything.
    assert "device-3F45" in clients
    assert (await other.publish("devices.3F45.events", b"{}")).error == ""


def _args(sec, data) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--security-dir", str(sec), "-store", "file", "-a", "127.0.0.1",
                         "-p", "-1", "-dir", str(data)])


async def test_a_session_revoked_while_the_server_is_down_is_not_restored(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)
    sec = tmp_path / "security"
    certs = init(str(sec / "certs"), ["localhost", "127.0.0.1"])
    store = creds.Store(str(sec))
    for dev in ("3F45", "9999"):
        store.add_device(dev)
    server = StreamingServer(from_args(_args(sec, tmp_path / "data")))
    await server.start()
    fleet = Fleet(server, store, certs.ca)
    try:
        for user in ("device-3F45", "device-9999"):
            assert (await (await fleet.raw(user)).connect()).error == ""
    finally:
        await fleet.close()
        await server.stop()
    store.revoke("9999")
    again = StreamingServer(from_args(_args(sec, tmp_path / "data")))
    await again.start()
    try:
        assert "device-3F45" in again.clients.clients  # restored as before
        assert "device-9999" not in again.clients.clients
        assert "device-9999" not in {r["client_id"] for r in await again.state.load_clients()}
    finally:
        await again.stop()


@pytest.fixture(autouse=True)
def _quiet_bcrypt(monkeypatch):
    monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)
