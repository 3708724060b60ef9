"""Channel families (--channel_families): many channels in one JetStream
stream, with STAN's per-channel behaviour kept. The protocol and limits tests
that need no stream of their own run here again with every channel in a family."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import families
from stanfleet.streaming.families import FamilyError, family_of, parse_patterns
from stanfleet.streaming.limits import ChannelLimits, StoreLimits

from ..waiting import eventually
from .rawstan import RawStan
from .test_limits import (  # noqa: F401  (run again on family channels)
    test_inactive_channel_without_subscriptions_is_deleted,
    test_max_msgs_override_drops_oldest_and_consuming_removes_nothing,
    test_max_subs_per_channel,
)
from .test_protocol import (  # noqa: F401
    announced,
    test_durable_queue_group_keeps_position_across_all_members_closing,
    test_durable_resumes_after_close_with_unacked_first,
    test_durable_survives_client_close_but_not_unsubscribe,
    test_max_in_flight_caps_unacked_messages,
    test_queue_members_share_and_a_leaver_hands_on_its_unacked,
    test_queue_redelivery_goes_to_a_member_that_acks,
    test_republished_guid_is_stored_once,
    test_start_positions,
    test_unacked_message_is_redelivered_after_ack_wait,
)

# Every channel the imported tests use falls in one of these.
FAMILIES = ["*", "*.*", "devices.*.events", "*.*.*"]


@pytest.fixture
async def make_stan_server(make_stan_server):
    async def start(**options):
        stan = await make_stan_server(channel_families=FAMILIES, **options)
        return stan
    return start


@pytest.fixture
async def stan_server(make_stan_server):
    return await make_stan_server()


async def connect(stan, client_id="c1") -> RawStan:
    c = await RawStan.open(stan.nats_url, stan.cluster_id, client_id)
    assert (await c.connect()).error == ""
    return c


def test_patterns_are_checked_and_the_first_match_wins():
    assert parse_patterns(["devices.*.events", "logs.>"]) == ["devices.*.events", "logs.>"]
    for bad in ("devices.x.events", "a.b*", "a.>.b", "a..*"):
        with pytest.raises(FamilyError):
            parse_patterns([bad])
    assert family_of(FAMILIES, "devices.A.events") == "devices.*.events"
    assert family_of(["devices.*.cfg"], "devices.A.events") is None


async def test_channels_of_one_family_share_a_stream_and_number_their_own_messages(stan_server):
    c = await connect(stan_server)
    for i in range(1, 4):
        for dev in ("A", "B"):
            ack = await c.publish(f"devices.{dev}.events", b"%s%d" % (dev.encode(), i))
            assert ack.error == ""
    channels = stan_server.server.channels.channels
    assert channels["devices.A.events"].stream == channels["devices.B.events"].stream
    info = await c.nc.jsm().stream_info(channels["devices.A.events"].stream)
    assert info.state.messages == 6
    sub = await c.subscribe("devices.B.events", "in.b", start_position=pb.First)
    got = [await sub.next() for _ in range(3)]
    assert [(m.sequence, m.data, m.subject) for m in got] == \
        [(1, b"B1", "devices.B.events"), (2, b"B2", "devices.B.events"),
         (3, b"B3", "devices.B.events")]
    # A start sequence is the channel's, not the shared stream's.
    from2 = await c.subscribe("devices.A.events", "in.a2", start_position=pb.SequenceStart,
                              start_sequence=2)
    assert [(await from2.next()).data for _ in range(2)] == [b"A2", b"A3"]


async def test_a_store_by_another_writer_is_never_given_the_same_sequence(stan_server):
    c = await connect(stan_server)
    assert (await c.publish("devices.W.events", b"1")).error == ""
    ch = stan_server.server.channels.channels["devices.W.events"]
    # A second writer (a stale FT active) stores sequence 2 behind our back.
    await c.nc.jetstream().publish(ch.store_subject, b"intruder", headers={"Stan-Seq": "2"})
    refused = await c.publish("devices.W.events", b"2")
    assert "another server" in refused.error
    assert (await c.publish("devices.W.events", b"3")).error == ""  # counter read again
    sub = await c.subscribe("devices.W.events", "in.w", start_position=pb.First)
    got = [await sub.next() for _ in range(3)]
    assert [(m.sequence, m.data) for m in got] == [(1, b"1"), (2, b"intruder"), (3, b"3")]


async def test_a_new_channel_starts_at_one_unless_another_writer_was_first(stan_server):
    """A channel the family stream had no message of starts its counter at 0
    without reading the stream; the first store expects no message on the
    subject, so a message another writer stored first is never overwritten."""
    c = await connect(stan_server)
    assert (await c.publish("devices.N.events", b"1")).error == ""  # no lookup needed
    family = stan_server.server.channels.families["devices.*.events"]
    subject = family.store_subject.replace("*", "X", 1)
    await c.nc.jetstream().publish(subject, b"intruder", headers={"Stan-Seq": "1"})
    refused = await c.publish("devices.X.events", b"2")
    assert "another server" in refused.error
    assert (await c.publish("devices.X.events", b"2")).error == ""  # counter read again
    for channel, want in (("devices.N.events", [(1, b"1")]),
                          ("devices.X.events", [(1, b"intruder"), (2, b"2")])):
        sub = await c.subscribe(channel, f"in.{channel}", start_position=pb.First)
        got = [await sub.next() for _ in want]
        assert [(m.sequence, m.data) for m in got] == want


async def test_a_channel_is_announced_before_its_first_message_is_stored(stan_server):
    """A channel with a message is in the registry, whichever server stored
    it; while its entry cannot be stored, its publishes are refused."""
    c = await connect(stan_server)
    store = stan_server.server.channels
    announce = store._announce
    failing = {"devices.F.events"}

    async def flaky(name):
        if name in failing:
            failing.discard(name)
            return "registry unavailable"
        return await announce(name)
    store._announce = flaky
    refused = await c.publish("devices.F.events", b"1")
    assert "not announced: registry unavailable" in refused.error
    assert (await c.publish("devices.F.events", b"2")).error == ""  # announced this time
    assert "devices.F.events" in await announced(stan_server, c)
    sub = await c.subscribe("devices.F.events", "in.f", start_position=pb.First)
    m = await sub.next()
    assert (m.sequence, m.data) == (1, b"2")


async def test_a_channel_a_stopped_server_left_unannounced_is_announced_by_the_next(
        make_stan_server):
    """Created by a durable subscription on a server that stopped before its
    registry entry was stored (seen: an FT active killed seconds after a
    fleet came up; the listeners never heard of the devices): the next server
    announces it before storing its first message."""
    stan = await make_stan_server()
    c = await connect(stan)

    async def lost(name):
        return "server stopped first"
    stan.server.channels._announce = lost
    dur = await c.subscribe("devices.U.events", "in.u", durable_name="d")
    assert dur.error == ""
    await stan.server.stop()
    again = await make_stan_server()
    c2 = await connect(again, "c2")
    assert (await c2.publish("devices.U.events", b"first")).error == ""
    assert "devices.U.events" in await announced(again, c2)


async def test_a_restarted_server_continues_each_channels_sequence(make_stan_server):
    stan = await make_stan_server()
    c = await connect(stan)
    for i in range(3):
        assert (await c.publish("devices.R.events", b"%d" % i)).error == ""
    assert (await c.publish("devices.S.events", b"s")).error == ""
    dur = await c.subscribe("devices.S.events", "in.s", durable_name="d", start_position=pb.First)
    await dur.ack(await dur.next())
    await c.end(dur, unsubscribe=False, durable_name="d")
    await stan.server.stop()
    again = await make_stan_server()
    assert {"devices.R.events", "devices.S.events"} <= set(again.server.channels.channels)
    c2 = await connect(again, "c2")
    assert (await c2.publish("devices.R.events", b"next")).error == ""
    assert (await c2.publish("devices.S.events", b"s2")).error == ""
    sub = await c2.subscribe("devices.R.events", "in.r", start_position=pb.LastReceived)
    m = await sub.next()
    assert (m.sequence, m.data) == (4, b"next")
    # The session outlived the restart, and its durable resumes after message 1.
    resumed = await c.subscribe("devices.S.events", "in.s2", durable_name="d")
    assert resumed.error == ""
    m = await resumed.next()
    assert (m.sequence, m.data) == (2, b"s2")


async def test_max_msgs_is_per_channel_and_inactivity_purges_only_its_channel(make_stan_server):
    limits = StoreLimits(per_channel={
        "devices.*.events": ChannelLimits(max_msgs=2, max_inactivity=0.5)})
    stan = await make_stan_server(limits=limits)
    c = await connect(stan)
    for i in range(1, 4):
        assert (await c.publish("devices.Q.events", b"q%d" % i)).error == ""
    held = await c.subscribe("devices.H.events", "in.h", start_position=pb.First)
    assert (await c.publish("devices.H.events", b"h1")).error == ""
    sub = await c.subscribe("devices.Q.events", "in.q", start_position=pb.First)
    assert [(await sub.next()).sequence for _ in range(2)] == [2, 3]
    await c.end(sub, unsubscribe=True)
    channels = stan.server.channels.channels

    async def q_gone():
        return "devices.Q.events" not in channels
    await eventually(q_gone)
    assert "devices.H.events" in channels
    await held.ack(await held.next())
    # Deleted: a new channel of that name starts again at 1.
    assert (await c.publish("devices.Q.events", b"new")).error == ""
    fresh = await c.subscribe("devices.Q.events", "in.q2", start_position=pb.First)
    m = await fresh.next()
    assert (m.sequence, m.data) == (1, b"new")


def test_families_come_from_the_flag_or_the_streaming_block_and_default_to_none(tmp_path):
    from .test_go_flags import opts
    assert opts().channel_families == []
    assert opts("--channel_families", "devices.*.events, devices.*.cfg").channel_families == \
        ["devices.*.events", "devices.*.cfg"]
    conf = tmp_path / "stan.conf"
    conf.write_text('streaming {\n  channel_families: "logs.>,devices.*.status"\n}\n')
    assert opts("-sc", str(conf)).channel_families == ["logs.>", "devices.*.status"]
    with pytest.raises(ValueError, match="no wildcard"):
        opts("--channel_families", "devices.A.events")
    site = tmp_path / "site.toml"
    site.write_text('[streaming]\nchannel_families = ["devices.*.events", "devices.*.cfg"]\n')
    assert opts("--site", str(site)).channel_families == ["devices.*.events", "devices.*.cfg"]
    # The shipped deployment config turns the device families on.
    from pathlib import Path
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "stanfleet.toml"
    from stanfleet.streaming import site as site_settings
    assert site_settings.settings(str(shipped))[0]["channel_families"] == \
        ["devices.*.events", "devices.*.cfg", "devices.*.status"]


async def test_channelsz_gives_a_family_channel_its_own_figures_and_durables(make_stan_server):
    import aiohttp
    stan = await make_stan_server(monitor_port=0)
    c = await connect(stan)
    for i in range(3):
        assert (await c.publish("devices.M.events", b"m%d" % i)).error == ""
    assert (await c.publish("devices.N.events", b"n")).error == ""
    dur = await c.subscribe("devices.N.events", "in.n", durable_name="dn",
                            start_position=pb.First)
    await dur.ack(await dur.next())
    await c.end(dur, unsubscribe=False, durable_name="dn")
    url = f"http://127.0.0.1:{stan.server.monitor_port}/streaming/channelsz?subs=1&channel="
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "devices.M.events") as r:
            m = await r.json()
        async with http.get(url + "devices.N.events") as r:
            n = await r.json()
    assert (m["msgs"], m["first_seq"], m["last_seq"], m["subscriptions"]) == (3, 1, 3, [])
    assert (n["msgs"], n["first_seq"], n["last_seq"]) == (1, 1, 1)
    assert [(s["durable_name"], s["is_offline"]) for s in n["subscriptions"]] == [("dn", True)]


async def test_a_restore_finds_a_family_channels_stream_the_listing_missed(stan_server):
    """Channels with durables but no message are not in a family's listing
    (a fleet's cfg channels); whether one has a stream of its own that the
    listing missed is asked once per family, not once per channel."""
    from nats.js import api
    from stanfleet.streaming.server import ChannelsUnlisted

    server = stan_server.server
    c = await connect(stan_server)
    jsm = c.nc.jsm()
    records = [{"channel": f"quiet.{i}.cfg"} for i in range(50)]
    await server._check_listing(records)  # none has a stream: nothing missed
    # A stream of the family's subjects that the listing did not bring (as
    # one taken mid-election would not): the restore must not go on.
    name = server.subjects.stream_for("quiet.7.cfg")
    await jsm.add_stream(api.StreamConfig(name=name,
                                          subjects=[server.subjects.store_subject("quiet.7.cfg")]))
    with pytest.raises(ChannelsUnlisted, match=name):
        await server._check_listing(records)


async def test_a_channel_counter_lookup_that_times_out_is_asked_again(make_stan_server, broker,
                                                                    monkeypatch):
    # After a restart a family channel's counter is read from its last message
    # on its first publish. nats-server stopped (SIGSTOP) while that lookup is
    # in flight: it times out, is asked again once nats-server runs, and the
    # publish is stored, not refused with "cannot read channel".
    stan = await make_stan_server()
    c = await connect(stan)
    assert (await c.publish("devices.T.events", b"1")).error == ""
    await stan.server.stop()
    again = await make_stan_server()
    again.server.channels.jsm._jsm._timeout = 0.5  # the lookup's wait, short for the test
    real = families.last_of
    stopped = []

    async def stalled(jsm, stream, subject):
        if not stopped:
            stopped.append(True)
            os.kill(broker.proc.pid, signal.SIGSTOP)
            asyncio.get_running_loop().call_later(
                1.5, os.kill, broker.proc.pid, signal.SIGCONT)
        return await real(jsm, stream, subject)
    monkeypatch.setattr(families, "last_of", stalled)
    c2 = await connect(again, "c2")
    ack = await c2.publish("devices.T.events", b"2")
    assert stopped and ack.error == ""
    sub = await c2.subscribe("devices.T.events", "in.t", start_position=pb.LastReceived)
    m = await sub.next()
    assert (m.sequence, m.data) == (2, b"2")


@pytest.mark.parametrize("lost", ["store", "answer"])
async def test_a_family_store_lost_in_an_election_is_sent_again(stan_server, lost):
    """A store (or its store-ack) lost, as in a JetStream leader election: the
    channel's next publishes wait for it, and before they waited for
    pub_ack_timeout (30 s). Another device's store to the same stream answered
    after it shows it lost, and it is sent again (the client here gives up
    after 10 s). Sent again when it was stored, it is refused as out of
    sequence or a duplicate and answered as stored; no seq is skipped."""
    store = stan_server.server.channels
    dropped = []
    gone = asyncio.Event()
    if lost == "store":
        send = store.relay.send
        t_store = store.subjects.store_subject("devices.T.events").encode()

        def lossy_send(raw):  # its store, not its registry entry (stored first)
            if not dropped and t_store in raw:
                dropped.append(raw)
                gone.set()
                return
            send(raw)
        store.relay.send = lossy_send
    else:
        sid = store._ack_sub._id
        handle = store.inline._handlers[sid]

        def lossy_ack(subject, reply, data, headers):
            p = store._pending.get(subject[store._ack_prefix_len:])
            if not dropped and p is not None and p.channel is not None and \
                    p.channel.name == "devices.T.events":
                dropped.append(data)
                gone.set()
                return
            handle(subject, reply, data, headers)
        store.inline._handlers[sid] = lossy_ack
    c = await connect(stan_server)
    first = asyncio.create_task(c.publish("devices.T.events", b"1"))
    await asyncio.wait_for(gone.wait(), 10)  # lost: now another device publishes
    assert (await c.publish("devices.U.events", b"u")).error == ""
    assert (await first).error == ""
    assert (await c.publish("devices.T.events", b"2")).error == ""
    sub = await c.subscribe("devices.T.events", "in.t", start_position=pb.First)
    got = [await sub.next() for _ in range(2)]
    assert [(m.sequence, m.data) for m in got] == [(1, b"1"), (2, b"2")]
    info = await c.nc.jsm().stream_info(store.channels["devices.T.events"].stream)
    assert info.state.messages == 3  # T's two and U's one: nothing stored twice
