"""Finding 4: one identity must not exhaust what all share. Quotas per
identity (streaming/quotas.py) against a real broker with accounts: the
attacker is device-3F45, the others keep working."""

from __future__ import annotations

import asyncio
import os

import nats

from ..waiting import eventually

QUOTA = "quota"


async def test_one_device_cannot_fill_a_shared_channel(fleet):
    """A device held 997 plain subscriptions on devices.releases and then no
    one else could subscribe there. max_subs now counts per identity, and a
    device's subscriptions are capped well below it."""
    fleet.server.opts.limits.defaults.max_subs = 6  # the channel's limit, small for the test
    attacker = await fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    refused = ""
    for i in range(20):
        sub = await attacker.subscribe("devices.releases", f"_INBOX.device-3F45.r{i}")
        if sub.error:
            refused = sub.error
            break
    assert i == 6 and "too many subscriptions per channel" in refused
    for user in ("device-9999", "admin"):
        other = await fleet.raw(user, None if user.startswith("device") else "ops-1")
        assert (await other.connect()).error == ""
        inbox = f"_INBOX.{user}.rel"
        assert (await other.subscribe("devices.releases", inbox)).error == ""
    # A device provisioned now subscribes too (once nats-server has reloaded
    # its accounts, which the broker does not announce).
    fleet.store.add_device("NEW1")
    newcomer = None

    async def admitted() -> bool:
        nonlocal newcomer
        try:
            newcomer = await fleet.raw("device-NEW1")
        except (nats.errors.Error, OSError):  # refused, or reset while nats-server reloads
            return False
        return True

    await eventually(admitted)
    assert (await newcomer.connect()).error == ""
    assert (await newcomer.subscribe("devices.releases", "_INBOX.device-NEW1.rel")).error == ""


async def test_subscriptions_per_identity_are_capped(fleet):
    cap = fleet.server.quotas.table["device"].subscriptions
    attacker = await fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    errors = []
    for i in range(cap + 1):
        channel = ("devices.releases", "devices.3F45.cfg")[i % 2]
        errors.append((await attacker.subscribe(channel, f"_INBOX.device-3F45.s{i}")).error)
    assert errors[:cap] == [""] * cap
    assert QUOTA in errors[cap] and "subscriptions" in errors[cap]


async def test_offline_durables_per_identity_are_capped(fleet):
    """300 offline durables in 1.2 s from one device, before."""
    cap = fleet.server.quotas.table["device"].durables
    attacker = await fleet.raw("device-3F45")
    assert (await attacker.connect()).error == ""
    errors = []
    for i in range(cap + 1):
        sub = await attacker.subscribe("devices.3F45.cfg", f"_INBOX.device-3F45.d{i}",
                                       durable_name=f"d{i}")
        errors.append(sub.error)
        if not sub.error:  # close: the durable stays, offline
            assert await attacker.end(sub, unsubscribe=False) == ""
    assert errors[:cap] == [""] * cap
    assert QUOTA in errors[cap] and "durable" in errors[cap]
    # Resuming one it has is no new durable; deleting one makes room.
    sub = await attacker.subscribe("devices.3F45.cfg", "_INBOX.device-3F45.again",
                                   durable_name="d0")
    assert sub.error == ""
    assert await attacker.end(sub, unsubscribe=True, durable_name="d0") == ""
    sub = await attacker.subscribe("devices.3F45.cfg", "_INBOX.device-3F45.new",
                                   durable_name="fresh")
    assert sub.error == ""


async def test_guids_longer_than_64_bytes_are_refused(fleet):
    """60,000-byte guids were stored as Nats-Msg-Id; STAN's are 22 bytes."""
    dev = await fleet.raw("device-3F45")
    assert (await dev.connect()).error == ""
    assert (await dev.publish("devices.3F45.events", b"{}", guid="g" * 64)).error == ""
    ack = await dev.publish("devices.3F45.events", b"{}", guid="g" * 65)
    assert "guid longer than 64 bytes" in ack.error
    stream = fleet.server.channels.channels["devices.3F45.events"].stream
    assert (await fleet.server.nc.jsm().stream_info(stream)).state.messages == 1


async def test_a_publish_flood_is_refused_to_the_flooder_only(fleet):
    """20,000 readings from one device slowed every other client's PubAcks."""
    q = fleet.server.quotas.table["device"]
    flooder = await fleet.raw("device-3F45")
    assert (await flooder.connect()).error == ""
    n = int(q.msgs_per_sec * 5 * 3)  # three times the burst a device has
    acks = await asyncio.gather(*(flooder.publish("devices.3F45.events", b'{"temp": 1}')
                                  for _ in range(n)))
    refused = [a.error for a in acks if a.error]
    assert refused and all(QUOTA in e and "publish" in e for e in refused)
    assert len(refused) <= n - q.msgs_per_sec * 5  # the burst went through
    victim = await fleet.raw("device-9999")
    assert (await victim.connect()).error == ""
    assert (await victim.publish("devices.9999.events", b'{"temp": 2}')).error == ""


async def test_pending_pubacks_per_identity_are_capped(fleet):
    """A quota on what one identity has in flight: past it, refused at once."""
    fleet.server.quotas.table["device"] = type(fleet.server.quotas.table["device"])(
        pending_pubacks=4)
    dev = await fleet.raw("device-3F45")
    assert (await dev.connect()).error == ""
    usage = fleet.server.quotas.of(fleet.server.authz.identify(
        {"Nats-Request-Info": '{"acc": "DEVICES", "user": "device-3F45"}'}))
    usage.pending = 4  # four stores in flight, as under a slow JetStream
    ack = await dev.publish("devices.3F45.events", b"{}", guid=os.urandom(8).hex())
    assert QUOTA in ack.error and "awaiting their PubAck" in ack.error
    usage.pending = 0
    assert (await dev.publish("devices.3F45.events", b"{}")).error == ""
    assert usage.pending == 0  # answered, so no longer counted


async def test_channels_created_per_identity_are_capped(fleet):
    quota = type(fleet.server.quotas.table["device"])
    fleet.server.quotas.table["device"] = quota(channels=1)
    dev = await fleet.raw("device-3F45")
    assert (await dev.connect()).error == ""
    assert (await dev.publish("devices.3F45.events", b"{}")).error == ""
    ack = await dev.publish("devices.3F45.status", b"{}")
    assert QUOTA in ack.error and "channels created" in ack.error
    assert "devices.3F45.status" not in fleet.server.channels.channels
    # Channels that exist cost nothing: another identity made cfg, it subscribes.
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.3F45.cfg", b"{}")
    assert (await dev.subscribe("devices.3F45.cfg", "_INBOX.device-3F45.c")).error == ""
