"""Finding 9: the official STAN clients could not be used with security on.
They pick their own inboxes (`_INBOX.<nuid>`) and take PubAcks on
`_STAN.acks.<nuid>`, which no user of a shared account may read. An identity
made with `--own-account` lives alone in its account, where every inbox is
its own. The official Node client (node-nats-streaming), unchanged."""

from __future__ import annotations

import asyncio

import pytest

from ..interop.nodepeer import NodePeer, node_missing_reason

_missing = node_missing_reason()
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"needs the Node client: {_missing}")


@pytest.fixture
async def fleet(make_fleet):
    # Made before nats-server starts: a reload does not wire a new account's
    # service imports (docs/security-design.md, "Official clients").
    return await make_fleet(own=("0FF1", "0FF2"))


async def test_official_node_client_works_in_an_account_of_its_own(fleet):
    creds = fleet.store.path("devices", "device-0FF1.json")
    peer = await NodePeer.start(fleet, "device-0FF1", creds=creds, ca=fleet.ca,
                                url=fleet.url)
    try:
        await peer.expect("connected")
        ack = await peer.publish("devices.0FF1.events", '{"temp": 20.5}')
        assert ack["error"] == "", ack
        # Its own channels only, as for any device.
        refused = await peer.subscribe("other", "devices.3F45.cfg")
        assert refused["event"] == "sub_error" and "not authorized" in refused["error"]
        ready = await peer.subscribe("cfg", "devices.0FF1.cfg", durable="cfg", start="all")
        assert ready["event"] == "ready", ready
        cfg = await fleet.stan("config-manager", "config-manager-1")
        await cfg.publish("devices.0FF1.cfg", b'{"sending_frequency": 7}')
        msg = await peer.expect("msg", sub="cfg")
        assert msg["data"] == '{"sending_frequency": 7}'
        # Heartbeats reach it through its account's import, and it answers.
        info = fleet.server.clients.clients["device-0FF1"]
        assert info.hb_inbox.startswith("_ACC.U_device-0FF1._INBOX.")
        assert await fleet.server.clients.is_alive(info, 5)
    finally:
        await peer.stop()


async def test_in_a_shared_account_the_official_client_is_refused(fleet):
    """What --own-account is for: in DEVICES its inboxes are not its own."""
    peer = await NodePeer.start(fleet, "device-3F45",
                                creds=fleet.store.path("devices", "device-3F45.json"),
                                ca=fleet.ca, url=fleet.url)
    try:
        event = await peer.expect(("connected", "error", "closed"))
        assert event["event"] != "connected"
    finally:
        await peer.stop()


async def test_others_cannot_read_its_pubacks(fleet):
    """A device in the shared account listening on every ack subject sees none
    of an own-account client's PubAcks: they stay in its account."""
    creds = fleet.store.path("devices", "device-0FF2.json")
    spy = await fleet.nats("admin")
    try:
        await spy.subscribe("_STAN.acks.>")
        await spy.flush()
        assert "permissions violation" in str(await asyncio.wait_for(spy.errors.get(), 5)).lower()
    finally:
        await spy.close()
    peer = await NodePeer.start(fleet, "device-0FF2", creds=creds, ca=fleet.ca,
                                url=fleet.url)
    try:
        await peer.expect("connected")
        assert (await peer.publish("devices.0FF2.events", "{}"))["error"] == ""
    finally:
        await peer.stop()
