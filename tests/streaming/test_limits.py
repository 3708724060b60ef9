"""Channel limits: flags, per-channel overrides with wildcards, inactivity."""

from __future__ import annotations

import json

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.channels import ChannelLimits
from stanfleet.streaming.limits import LimitsError, StoreLimits, load

from ..waiting import eventually
from .rawstan import RawStan


def write(tmp_path, doc) -> str:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_literal_override_beats_wildcards_and_more_literal_wildcard_wins(tmp_path):
    lim = load(write(tmp_path, {"store_limits": {"max_msgs": 50, "channels": {
        "devices.*.events": {"max_msgs": 10},
        "devices.>": {"max_msgs": 20, "max_age": "1h"},
        "devices.3F45.events": {"max_msgs": 5}}}}), StoreLimits())
    assert lim.for_channel("devices.3F45.events").max_msgs == 5
    assert lim.for_channel("devices.9999.events").max_msgs == 10
    assert lim.for_channel("devices.9999.cfg").max_msgs == 20
    assert lim.for_channel("devices.9999.cfg").max_age == 3600
    assert lim.for_channel("other").max_msgs == 50
    # Unset (or 0) in an override: inherited from the server-wide value.
    assert lim.for_channel("devices.9999.events").max_bytes == ChannelLimits().max_bytes


@pytest.mark.parametrize("doc, message", [
    ({"store_limits": {"max_msgs": "lots"}}, "integer"),
    ({"store_limits": {"max_bytes": "12 parsecs"}}, "invalid size"),
    ({"store_limits": {"channels": {"a.*": {"max_age": "soon"}}}}, "invalid duration"),
    ({"store_limits": {"max_msg": 5}}, "unknown limit"),
    ({"store_limits": {"max_msgs": -1}}, "negative"),
])
def test_bad_limits_file_gives_a_clear_error(tmp_path, doc, message):
    with pytest.raises(LimitsError, match=message):
        load(write(tmp_path, doc), StoreLimits())


def test_unreadable_limits_file(tmp_path):
    with pytest.raises(LimitsError, match="cannot read"):
        load(str(tmp_path / "missing.json"), StoreLimits())
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(LimitsError, match="not valid JSON"):
        load(str(tmp_path / "bad.json"), StoreLimits())


async def connect(stan, client_id="c1") -> RawStan:
    c = await RawStan.open(stan.nats_url, stan.cluster_id, client_id)
    assert (await c.connect()).error == ""
    return c


async def test_channel_count_limit_gives_a_clear_publish_error(make_stan_server):
    stan = await make_stan_server(limits=StoreLimits(max_channels=2))
    c = await connect(stan)
    assert (await c.publish("a", b"1")).error == ""
    assert (await c.publish("b", b"1")).error == ""
    assert "too many channels" in (await c.publish("c", b"1")).error
    assert (await c.publish("a", b"2")).error == ""  # existing channels keep working


async def test_max_msgs_override_drops_oldest_and_consuming_removes_nothing(make_stan_server):
    limits = StoreLimits(per_channel={"devices.*.events": ChannelLimits(max_msgs=3)})
    stan = await make_stan_server(limits=limits)
    c = await connect(stan)
    for i in range(1, 6):
        assert (await c.publish("devices.3F45.events", b"%d" % i)).error == ""
        assert (await c.publish("other", b"%d" % i)).error == ""
    sub = await c.subscribe("devices.3F45.events", "in.lim", start_position=pb.First)
    got = [await sub.next() for _ in range(3)]
    assert [m.sequence for m in got] == [3, 4, 5]
    for m in got:
        await sub.ack(m)
    # A second reader still finds everything: consumption never removes messages.
    again = await c.subscribe("devices.3F45.events", "in.lim2", start_position=pb.First)
    assert (await again.next()).sequence == 3
    other = await c.subscribe("other", "in.other", start_position=pb.First)
    assert (await other.next()).sequence == 1


async def test_max_subs_per_channel(make_stan_server):
    stan = await make_stan_server(limits=StoreLimits(defaults=ChannelLimits(max_subs=1)))
    c = await connect(stan)
    assert (await c.subscribe("s", "in.s1")).error == ""
    assert "too many subscriptions" in (await c.subscribe("s", "in.s2")).error


async def test_inactive_channel_without_subscriptions_is_deleted(make_stan_server):
    limits = StoreLimits(per_channel={"tmp.>": ChannelLimits(max_inactivity=0.3)})
    stan = await make_stan_server(limits=limits)
    c = await connect(stan)
    await c.publish("tmp.a", b"1")
    await c.publish("keep", b"1")
    held = await c.subscribe("tmp.b", "in.held")
    assert held.error == ""
    channels = stan.server.channels.channels

    async def tmp_a_gone():
        return "tmp.a" not in channels
    await eventually(tmp_a_gone)
    assert "keep" in channels and "tmp.b" in channels


async def test_short_max_age_expires_messages(make_stan_server):
    limits = StoreLimits(per_channel={"short": ChannelLimits(max_age=1)})
    stan = await make_stan_server(limits=limits)
    c = await connect(stan)
    assert (await c.publish("short", b"old")).error == ""
    ch = stan.server.channels.channels["short"]

    async def expired():
        info = await c.nc.jsm().stream_info(ch.stream)
        return info.state.messages == 0
    await eventually(expired)
    assert (await c.publish("short", b"new")).error == ""
    sub = await c.subscribe("short", "in.short", start_position=pb.First)
    assert (await sub.next()).data == b"new"
