"""Every client is authenticated and confined to its own channels: attacks by
device 3F45 on device 9999, through a real nats-server with the STAN /
DEVICES / SERVICES accounts, TLS, and the streaming server's own checks.
The real device-9999 keeps working throughout."""

from __future__ import annotations

import asyncio
import json

import pytest
from stanfleet.client import ErrConnectRejected, ErrPublishRejected, ErrSubscriptionRejected
from stanfleet.pb import protocol_pb2 as pb

from ..waiting import eventually

NOT_AUTHORIZED = "not authorized"
FOREIGN_CHANNELS = ("devices.9999.events", "devices.9999.status", "devices.releases",
                    "devices.3F45.cfg", "devices.9999.cfg", "stanfleet.channels", "other")


async def victim_still_works(fleet, victim) -> None:
    """device-9999's session is intact: it publishes, and its pings are answered."""
    ack = await victim.publish("devices.9999.events", b'{"temp": 21}')
    assert ack.error == ""
    assert (await victim.ping()).error == ""


async def test_device_uses_its_own_channels(fleet):
    sc = await fleet.stan("device-3F45")
    # Heartbeats reach the device through the account import, and it answers.
    info = fleet.server.clients.clients["device-3F45"]
    assert info.hb_inbox.startswith("_DEV._INBOX.device-3F45.")
    assert await fleet.server.clients.is_alive(info, 5)
    for channel in ("devices.3F45.events", "devices.3F45.status"):
        ack = await sc.publish(channel, b"{}")
        assert ack.guid and not ack.error
    got = asyncio.Queue()
    for channel in ("devices.3F45.cfg", "devices.releases"):
        await sc.subscribe(channel, cb=got.put, deliver_all_available=True)
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.3F45.cfg", b'{"sending_frequency": 5}')
    assert (await asyncio.wait_for(got.get(), 10)).data == b'{"sending_frequency": 5}'


async def test_server_refuses_foreign_publishes(loose_fleet):
    """The broker lets every _STAN publish through here: the server alone refuses."""
    victim = await loose_fleet.raw("device-9999")
    assert (await victim.connect()).error == ""
    attacker = await loose_fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    assert (await attacker.publish("devices.3F45.events", b"{}")).error == ""
    for channel in FOREIGN_CHANNELS:
        ack = await attacker.publish(channel, b"{}")
        assert NOT_AUTHORIZED in ack.error, channel
    # Publishing as device-9999's session, with its conn_id, to its channel.
    attacker.client_id, attacker.conn_id = victim.client_id, victim.conn_id
    ack = await attacker.publish("devices.9999.events", b'{"forged": true}')
    assert NOT_AUTHORIZED in ack.error
    await victim_still_works(loose_fleet, victim)


async def test_broker_stops_foreign_publishes(fleet):
    """With the generated permissions the PubMsg never reaches the server."""
    attacker = await fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    for channel in FOREIGN_CHANNELS:
        await attacker.nc.publish(f"{attacker.resp.pub_prefix}.{channel}", b"x")
        err = await asyncio.wait_for(attacker.nc.errors.get(), 10)
        assert "permissions violation" in str(err).lower(), channel
    victim = await fleet.raw("device-9999")
    assert (await victim.connect()).error == ""
    await victim_still_works(fleet, victim)


async def test_device_subscribes_to_its_own_channels_only(fleet):
    victim = await fleet.raw("device-9999")
    assert (await victim.connect()).error == ""
    vsub = await victim.subscribe("devices.9999.cfg", "_INBOX.device-9999.cfg")
    assert vsub.error == ""
    attacker = await fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    for channel in ("devices.9999.cfg", "devices.3F45.events", "devices.9999.events",
                    "stanfleet.channels"):
        sub = await attacker.subscribe(channel, "_INBOX.device-3F45.s1")
        assert NOT_AUTHORIZED in sub.error, channel
    # Its own channel, but deliveries to device-9999's inbox: refused by the
    # broker (the SUB) and by the server (the request).
    sub = await attacker.subscribe("devices.3F45.cfg", "_INBOX.device-9999.cfg")
    assert NOT_AUTHORIZED in sub.error
    assert "permissions violation" in str(await attacker.nc.errors.get()).lower()
    ok = await attacker.subscribe("devices.releases", "_INBOX.device-3F45.rel")
    assert ok.error == ""
    # The victim still gets its configuration.
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.9999.cfg", b'{"buffer_size": 10}')
    assert (await vsub.next()).data == b'{"buffer_size": 10}'
    await victim_still_works(fleet, victim)


async def test_device_cannot_connect_as_another(fleet):
    attacker = await fleet.raw("device-3F45", "device-9999")
    resp = await attacker.connect()
    assert NOT_AUTHORIZED in resp.error
    with pytest.raises(ErrConnectRejected, match=NOT_AUTHORIZED):
        await fleet.stan("device-3F45", "device-9999")
    with pytest.raises(ErrConnectRejected, match=NOT_AUTHORIZED):
        await fleet.stan("listener", "device-9999")  # a service takes no device's ID
    assert "device-9999" not in fleet.server.clients.clients


async def test_no_other_identity_replaces_a_session_dead_or_alive(fleet):
    """The duplicate-clientID rule replaces a session that misses its liveness
    check; another identity must not get that far."""
    victim = await fleet.raw("device-9999", answer_heartbeats=False)
    assert (await victim.connect()).error == ""
    for user in ("device-3F45", "admin", "listener"):
        resp = await (await fleet.raw(user, "device-9999")).connect()
        assert NOT_AUTHORIZED in resp.error, user
    assert fleet.server.clients.clients["device-9999"].conn_id == victim.conn_id
    await victim_still_works(fleet, victim)
    # The device itself, back after a reboot, does replace its silent session.
    again = await fleet.raw("device-9999")
    assert (await again.connect()).error == ""
    assert fleet.server.clients.clients["device-9999"].conn_id == again.conn_id


async def test_device_cannot_close_ping_unsubscribe_or_ack_for_another(fleet):
    victim = await fleet.raw("device-9999")
    assert (await victim.connect()).error == ""
    vsub = await victim.subscribe("devices.9999.cfg", "_INBOX.device-9999.cfg")
    attacker = await fleet.raw("device-3F45", "device-9999")
    attacker.conn_id = victim.conn_id
    assert NOT_AUTHORIZED in (await attacker.ping()).error
    forged = type(vsub)(attacker, vsub.channel, vsub.inbox)
    forged.ack_inbox, forged.nsub = vsub.ack_inbox, await attacker.nc.subscribe("_INBOX.device-3F45.x")
    assert NOT_AUTHORIZED in await attacker.end(forged, unsubscribe=True)
    forged.nsub = await attacker.nc.subscribe("_INBOX.device-3F45.x")
    assert NOT_AUTHORIZED in await attacker.end(forged, unsubscribe=False)
    # An ack for the victim's message is ignored: it stays outstanding.
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.9999.cfg", b"{}")
    m = await vsub.next()
    await forged.ack(m)
    server = fleet.server

    async def refused():
        return any(k[0] == "ack" for k in server._refusals)
    await eventually(refused)
    member = server.subs.by_ack_inbox[vsub.ack_inbox]
    assert m.sequence in member.outstanding
    assert NOT_AUTHORIZED in await attacker.close()
    assert "device-9999" in server.clients.clients
    await victim_still_works(fleet, victim)
    await vsub.ack(m)
    assert await victim.end(vsub, unsubscribe=True) == ""
    assert await victim.close() == ""


async def test_forged_request_info_is_replaced_by_the_broker(loose_fleet):
    attacker = await loose_fleet.raw("device-3F45")
    nc = attacker.nc
    forged = {"Nats-Request-Info": json.dumps({"acc": "DEVICES", "user": "device-9999"})}
    req = pb.ConnectRequest(client_id="device-9999", heartbeat_inbox=attacker.hb_inbox,
                            protocol=1, conn_id=attacker.conn_id)
    r = await nc.request(f"_STAN.discover.{loose_fleet.cluster_id}", req.SerializeToString(),
                         timeout=10, headers=forged)
    err = pb.ConnectResponse.FromString(r.data).error
    assert NOT_AUTHORIZED in err and "device-3F45" in err
    assert (await attacker.connect()).error == ""
    admin = {"Nats-Request-Info": json.dumps({"acc": "SERVICES", "user": "admin"})}
    pm = pb.PubMsg(client_id="device-3F45", guid="g1", subject="devices.releases", data=b"{}",
                   conn_id=attacker.conn_id)
    r = await nc.request(f"{attacker.resp.pub_prefix}.devices.releases", pm.SerializeToString(),
                         timeout=10, headers=admin)
    assert NOT_AUTHORIZED in pb.PubAck.FromString(r.data).error


async def test_services_have_their_roles_rights(fleet):
    dev = await fleet.stan("device-3F45")
    other = await fleet.stan("device-9999")
    listener = await fleet.stan("listener", "listener-a")
    cfg = await fleet.stan("config-manager", "config-manager-1")
    rel = await fleet.stan("release-manager", "release-manager-1")
    admin = await fleet.stan("admin", "up-dashboard")

    readings, releases, registry = asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
    await listener.subscribe("devices.3F45.events", cb=readings.put, queue="listeners",
                             durable_name="listeners", deliver_all_available=True)
    await listener.subscribe("stanfleet.channels", cb=registry.put, deliver_all_available=True)
    for d in (dev, other):
        await d.subscribe("devices.releases", cb=releases.put, deliver_all_available=True)
    await dev.publish("devices.3F45.events", b'{"temp": 20}')
    assert (await asyncio.wait_for(readings.get(), 10)).data == b'{"temp": 20}'
    assert json.loads((await asyncio.wait_for(registry.get(), 10)).data)["channel"]
    await rel.publish("devices.releases", b'{"version": "1.2.0"}')
    for _ in (dev, other):
        assert (await asyncio.wait_for(releases.get(), 10)).data == b'{"version": "1.2.0"}'
    await cfg.subscribe("devices.3F45.status", cb=readings.put)
    await rel.subscribe("devices.9999.status", cb=readings.put)
    await admin.publish("devices.9999.cfg", b"{}")  # admin: everything

    # Publishing outside the role: the broker stops the PubMsg (least privilege).
    pub_prefix = fleet.server.subjects.pub_prefix
    for user, channel in SERVICE_TRESPASS:
        nc = await fleet.nats(user)
        await nc.publish(f"{pub_prefix}.{channel}", b"{}")
        assert "permissions violation" in str(await asyncio.wait_for(nc.errors.get(), 10)).lower()
    for sc, channel in ((cfg, "devices.3F45.events"), (rel, "devices.3F45.cfg")):
        with pytest.raises(ErrSubscriptionRejected, match=NOT_AUTHORIZED):
            await sc.subscribe(channel, cb=readings.put)


SERVICE_TRESPASS = (("listener", "devices.3F45.cfg"), ("listener", "devices.3F45.events"),
                    ("config-manager", "devices.releases"), ("release-manager", "devices.3F45.cfg"),
                    ("config-manager", "devices.3F45.events"))


async def test_server_refuses_service_publishes_outside_the_role(loose_fleet):
    """With the broker letting every service PubMsg through, the server refuses."""
    for i, (user, channel) in enumerate(SERVICE_TRESPASS):
        sc = await loose_fleet.stan(user, f"{user}-{i}")
        with pytest.raises(ErrPublishRejected, match=NOT_AUTHORIZED):
            await sc.publish(channel, b"{}")


async def test_queue_groups_are_per_identity(fleet):
    """Joining another identity's queue group would take a share of its messages."""
    a = await fleet.raw("device-3F45")
    b = await fleet.raw("device-9999")
    for c in (a, b):
        assert (await c.connect()).error == ""
    sa = await a.subscribe("devices.releases", "_INBOX.device-3F45.q", q_group="ota",
                           durable_name="ota")
    sb = await b.subscribe("devices.releases", "_INBOX.device-9999.q", q_group="ota",
                           durable_name="ota")
    assert sa.error == sb.error == ""
    rel = await fleet.stan("release-manager", "release-manager-1")
    await rel.publish("devices.releases", b"r1")
    assert (await sa.next()).data == (await sb.next()).data == b"r1"


async def test_no_one_reads_another_clients_pubacks(fleet):
    """PubAcks come to the publisher's own inbox: a device can neither listen on
    the STAN ack subjects nor on another identity's inboxes, and still gets its own."""
    victim = await fleet.stan("device-9999")
    spy = await fleet.nats("device-3F45")
    for subject in ("_STAN.acks.>", "_INBOX.device-9999.>", "_INBOX.>", ">"):
        await spy.subscribe(subject)
        err = await asyncio.wait_for(spy.errors.get(), 10)
        assert "permissions violation" in str(err).lower(), subject
    ack = await victim.publish("devices.9999.events", b'{"temp": 20}')
    assert ack.error == "" and ack.guid
