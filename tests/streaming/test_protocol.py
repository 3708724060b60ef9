"""The streaming server against the raw STAN protocol, over a real nats-server."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.errors import NotFoundError
from stanfleet.pb import protocol_pb2 as pb

from ..waiting import eventually
from .rawstan import RawStan


async def client(stan, client_id="c1", **kw) -> RawStan:
    c = await RawStan.open(stan.nats_url, stan.cluster_id, client_id, **kw)
    resp = await c.connect()
    assert resp.error == ""
    return c


async def test_connect_returns_the_request_subjects(stan_server):
    c = await client(stan_server)
    r = c.resp
    assert r.pub_prefix and r.sub_requests and r.unsub_requests and r.close_requests
    assert r.sub_close_requests and r.ping_requests and r.protocol == 1
    assert (await c.ping()).error == ""
    assert await c.close() == ""


async def test_publish_is_acked_after_store_and_sequences_have_no_gaps(stan_server):
    c = await client(stan_server)
    for i in range(5):
        ack = await c.publish("devices.3F45.events", b"m%d" % i, guid=f"g{i}")
        assert ack.error == "" and ack.guid == f"g{i}"
    js = c.nc.jsm()
    ch = stan_server.server.channels.channels["devices.3F45.events"]
    info = await js.stream_info(ch.stream)
    assert (info.state.first_seq, info.state.last_seq, info.state.messages) == (1, 5, 5)


async def announced(stan, c) -> list[str]:
    """The channels in the server's registry (stanfleet.channels), in order."""
    jsm = c.nc.jsm()
    stream = stan.server.channels.channels["stanfleet.channels"].stream
    info = await jsm.stream_info(stream)
    return [json.loads((await jsm.get_msg(stream, seq)).data)["channel"]
            for seq in range(info.state.first_seq, info.state.last_seq + 1)]


async def test_a_new_channel_is_announced_before_its_stream_exists(stan_server):
    """A server found the channel's stream at a restart (or a takeover) does
    not announce it again, so its registry entry is stored first; the
    publishes waiting meanwhile are stored after, in order. The entry is held
    open here."""
    c = await client(stan_server)
    channels = stan_server.server.channels
    entered, release = asyncio.Event(), asyncio.Event()
    announce = channels._announce

    async def held_announce(name):
        if name == "order":
            entered.set()
            await release.wait()
        return await announce(name)
    channels._announce = held_announce
    first = [asyncio.create_task(c.publish("order", b"m%d" % i)) for i in range(10)]
    await entered.wait()
    with pytest.raises(NotFoundError):
        await c.nc.jsm().stream_info(channels.channels["order"].stream)
    release.set()
    assert [(await t).error for t in first] == [""] * 10
    assert "order" in await announced(stan_server, c)
    sub = await c.subscribe("order", "in.order", start_position=pb.First)
    got = [(await sub.next()).data for _ in range(10)]
    assert got == [b"m%d" % i for i in range(10)]


async def test_a_channel_that_cannot_be_announced_is_not_created(stan_server):
    c = await client(stan_server)
    channels = stan_server.server.channels

    async def failing(name):
        return "registry unavailable"
    channels._announce = failing
    refused = await c.publish("unlisted", b"m")
    assert "not announced: registry unavailable" in refused.error
    assert "unlisted" not in channels.channels  # the next use tries again
    del channels._announce
    assert (await c.publish("unlisted", b"m")).error == ""
    assert "unlisted" in await announced(stan_server, c)


async def test_republished_guid_is_stored_once(stan_server):
    c = await client(stan_server)
    assert (await c.publish("dup", b"x", guid="same")).error == ""
    assert (await c.publish("dup", b"x", guid="same")).error == ""
    assert (await c.publish("dup", b"y", guid="other")).error == ""
    sub = await c.subscribe("dup", "in.dup", start_position=pb.First)
    assert [(await sub.next()).data for _ in range(2)] == [b"x", b"y"]
    await sub.ack(pb.MsgProto(sequence=1))
    c2 = await client(stan_server, "c2")
    info = await c2.nc.jsm().stream_info(stan_server.server.channels.channels["dup"].stream)
    assert info.state.messages == 2


async def test_publish_from_unknown_client_or_replaced_session_is_refused(stan_server):
    c = await client(stan_server)
    ghost = RawStan(c.nc, stan_server.cluster_id, "ghost")
    ghost.resp = c.resp
    # Go's PubAck text for both (its PingResponse says "replaced")
    assert (await ghost.publish("ch", b"x")).error == "stan: invalid publish request"
    c.conn_id = b"not-the-session"
    assert (await c.publish("ch", b"x")).error == "stan: invalid publish request"


@pytest.mark.parametrize("channel", ["a..b", "a.*", "a.>", "sp ace"])
async def test_invalid_channel_names_are_refused(stan_server, channel):
    c = await client(stan_server)
    pm = pb.PubMsg(client_id="c1", guid="g", subject=channel, data=b"x", conn_id=c.conn_id)
    r = await c.nc.request(f"{c.resp.pub_prefix}.ok", pm.SerializeToString(), timeout=5)
    assert pb.PubAck.FromString(r.data).error
    sub = await c.subscribe(channel, "in.bad")
    assert sub.error


async def test_start_positions(stan_server):
    c = await client(stan_server)
    for i in range(1, 6):
        await c.publish("pos", b"%d" % i)

    async def first_seq(**fields):
        sub = await c.subscribe("pos", f"in.{len(fields)}.{fields}".replace(" ", "")
                                .replace("'", "").replace(":", "").replace("{", "")
                                .replace("}", "").replace(",", ""), **fields)
        assert sub.error == ""
        return (await sub.next()).sequence, sub

    assert (await first_seq(start_position=pb.First))[0] == 1
    assert (await first_seq(start_position=pb.LastReceived))[0] == 5
    assert (await first_seq(start_position=pb.SequenceStart, start_sequence=3))[0] == 3
    assert (await first_seq(start_position=pb.TimeDeltaStart,
                            start_time_delta=60 * 10**9))[0] == 1
    sub = await c.subscribe("pos", "in.new", start_position=pb.NewOnly)
    await c.publish("pos", b"6")
    assert (await sub.next()).sequence == 6
    # Past the end: accepted, from the next message on (Go's rule)
    past = await c.subscribe("pos", "in.past", start_position=pb.SequenceStart,
                             start_sequence=100)
    assert past.error == ""
    await c.publish("pos", b"7")
    assert (await past.next()).sequence == 7


async def test_max_in_flight_caps_unacked_messages(stan_server):
    c = await client(stan_server)
    sub = await c.subscribe("mif", "in.mif", max_in_flight=2, start_position=pb.First)
    for i in range(5):
        await c.publish("mif", b"%d" % i)
    m1, m2 = await sub.next(), await sub.next()
    assert (m1.sequence, m2.sequence) == (1, 2)
    await sub.ack(m1)
    # Only after an ack does the next one come, and it is 3, not a later one.
    assert (await sub.next()).sequence == 3


async def test_unacked_message_is_redelivered_after_ack_wait(stan_server):
    c = await client(stan_server)
    sub = await c.subscribe("rd", "in.rd", ack_wait_in_secs=1, start_position=pb.First)
    await c.publish("rd", b"x")
    first = await sub.next()
    assert not first.redelivered and first.redelivery_count == 0
    again = await sub.next()
    assert again.sequence == first.sequence
    assert again.redelivered and again.redelivery_count == 1
    await sub.ack(again)


async def test_durable_resumes_after_close_with_unacked_first(stan_server):
    c = await client(stan_server)
    for i in range(1, 4):
        await c.publish("dur", b"%d" % i)
    sub = await c.subscribe("dur", "in.d1", durable_name="dd", start_position=pb.First)
    got = [await sub.next() for _ in range(3)]
    await sub.ack(got[0])
    assert await c.end(sub, unsubscribe=False, durable_name="dd") == ""
    await c.publish("dur", b"4")
    # The start position of a resumed durable is ignored.
    again = await c.subscribe("dur", "in.d2", durable_name="dd", start_position=pb.NewOnly)
    assert again.error == ""
    seqs = [(await again.next()) for _ in range(3)]
    assert [m.sequence for m in seqs] == [2, 3, 4]
    assert seqs[0].redelivered and seqs[1].redelivered and not seqs[2].redelivered


async def test_durable_survives_client_close_but_not_unsubscribe(stan_server):
    c = await client(stan_server)
    await c.publish("dur2", b"1")
    sub = await c.subscribe("dur2", "in.a", durable_name="d", start_position=pb.First)
    await sub.ack(await sub.next())
    assert await c.close() == ""
    await client(stan_server, "other")  # the server is still serving
    c = await client(stan_server)
    await c.publish("dur2", b"2")
    sub = await c.subscribe("dur2", "in.b", durable_name="d", start_position=pb.First)
    assert (await sub.next()).sequence == 2  # position kept
    await sub.ack(pb.MsgProto(sequence=2))
    assert await c.end(sub, unsubscribe=True) == ""
    sub = await c.subscribe("dur2", "in.c", durable_name="d", start_position=pb.First)
    assert (await sub.next()).sequence == 1  # deleted: starts afresh


async def test_active_durable_cannot_be_registered_twice(stan_server):
    c = await client(stan_server)
    sub = await c.subscribe("dd", "in.1", durable_name="x")
    assert sub.error == ""
    dup = await c.subscribe("dd", "in.2", durable_name="x")
    assert "duplicate durable" in dup.error


async def test_queue_members_share_and_a_leaver_hands_on_its_unacked(stan_server):
    c = await client(stan_server)
    a = await c.subscribe("q", "in.qa", q_group="workers", max_in_flight=1)
    b = await c.subscribe("q", "in.qb", q_group="workers", max_in_flight=1)
    await c.publish("q", b"1")
    await c.publish("q", b"2")
    ma, mb = await a.next(), await b.next()
    assert {ma.sequence, mb.sequence} == {1, 2}
    assert await c.end(a, unsubscribe=False) == ""
    await b.ack(mb)
    handed = await b.next()
    assert handed.sequence == ma.sequence and handed.redelivered
    await b.ack(handed)


async def test_durable_queue_group_keeps_position_across_all_members_closing(stan_server):
    c = await client(stan_server)
    q = await c.subscribe("dq", "in.dq1", q_group="g", durable_name="dur",
                          start_position=pb.First)
    await c.publish("dq", b"1")
    await q.ack(await q.next())
    assert await c.end(q, unsubscribe=False) == ""
    await c.publish("dq", b"2")
    c2 = await client(stan_server, "c2")  # another client joins the same durable queue
    q2 = await c2.subscribe("dq", "in.dq2", q_group="g", durable_name="dur",
                            start_position=pb.First)
    assert (await q2.next()).sequence == 2


async def test_duplicate_client_id_rejected_while_alive_replaced_when_dead(stan_server):
    first = await client(stan_server, "dev")
    second = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, "dev")
    assert "clientID already registered" in (await second.connect()).error
    await first.vanish()
    assert (await second.connect()).error == ""
    assert (await second.ping()).error == ""


async def test_client_that_stops_answering_heartbeats_is_removed_and_durable_kept(
        make_stan_server):
    stan = await make_stan_server(hb_interval=0.1, hb_timeout=0.1, hb_fail_count=2)
    c = await client(stan, "dying")
    await c.publish("hb", b"1")
    sub = await c.subscribe("hb", "in.hb", durable_name="keep", start_position=pb.First)
    await sub.next()  # unacked when the client dies
    await c.vanish()
    probe = await client(stan, "probe")

    async def gone():
        return "dying" not in stan.server.clients.clients
    await eventually(gone)
    c = await client(stan, "dying")
    again = await c.subscribe("hb", "in.hb2", durable_name="keep", start_position=pb.NewOnly)
    m = await again.next()
    assert m.sequence == 1 and m.redelivered
    assert (await probe.ping()).error == ""


async def test_a_publishing_client_is_not_heartbeated_and_reaped_once_silent(make_stan_server):
    # Publishes naming the session's conn_id show it alive as pings do: a
    # client that cannot answer heartbeats keeps its session while it
    # publishes (our firmware skips pings after a PubAck), and loses it after.
    stan = await make_stan_server(hb_interval=0.1, hb_timeout=0.1, hb_fail_count=2)
    c = await client(stan, "mute", answer_heartbeats=False)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.0  # ten heartbeat intervals; unheard, reaped after ~0.3 s
    n = 0
    while loop.time() < until:
        assert (await c.publish("busy", b"x")).error == "", f"refused after {n} publishes"
        n += 1

    async def gone():
        return "mute" not in stan.server.clients.clients
    await eventually(gone)


async def test_ping_after_close_reports_session_gone(stan_server):
    c = await client(stan_server)
    nc2 = await nats.connect(stan_server.nats_url)
    await c.close()
    r = await nc2.request(c.resp.ping_requests, pb.Ping(conn_id=c.conn_id).SerializeToString(),
                          timeout=5)
    assert "replaced" in pb.PingResponse.FromString(r.data).error
    await nc2.close()


async def test_malformed_protobuf_on_every_subject_gets_an_error_and_server_keeps_serving(
        stan_server):
    c = await client(stan_server)
    garbage = b"\xff\xff\xff\xff"
    r = c.resp
    for subject, cls in ((f"_STAN.discover.{stan_server.cluster_id}", pb.ConnectResponse),
                         (r.sub_requests, pb.SubscriptionResponse),
                         (r.unsub_requests, pb.SubscriptionResponse),
                         (r.sub_close_requests, pb.SubscriptionResponse),
                         (r.close_requests, pb.CloseResponse),
                         (r.ping_requests, pb.PingResponse),
                         (f"{r.pub_prefix}.some.channel", pb.PubAck)):
        reply = await c.nc.request(subject, garbage, timeout=5)
        assert cls.FromString(reply.data).error, subject
        await c.nc.publish(subject, garbage)  # and without a reply subject
    sub = await c.subscribe("after", "in.after", start_position=pb.First)
    await c.nc.publish(sub.ack_inbox, garbage)
    assert (await c.publish("after", b"ok")).error == ""
    assert (await sub.next()).data == b"ok"


async def test_invalid_subscription_parameters_are_refused(stan_server):
    c = await client(stan_server)
    assert "ack wait" in (await c.subscribe("p", "in.p1", ack_wait_in_secs=0)).error
    assert "MaxInflight" in (await c.subscribe("p", "in.p2", max_in_flight=-5)).error
    assert (await c.subscribe("p", "in.p3", start_position=77)).error


async def test_new_channels_are_announced_on_the_registry_channel(stan_server):
    import json

    c = await client(stan_server)
    reg = await c.subscribe("stanfleet.channels", "in.reg", start_position=pb.First)
    await c.publish("devices.3F45.events", b"1")
    await c.publish("devices.3F45.events", b"2")
    await c.publish("devices.9999.events", b"1")
    names = [json.loads((await reg.next()).data)["channel"] for _ in range(2)]
    assert names == ["devices.3F45.events", "devices.9999.events"]


async def test_queue_redelivery_goes_to_a_member_that_acks(stan_server):
    """A member that never acks (its client lost the subscribe reply, say) does not
    keep its share: after ack_wait the original redelivers a queue message to the
    least loaded member, not necessarily the same one."""
    c = await client(stan_server)
    await c.subscribe("rq", "in.silent", q_group="w", ack_wait_in_secs=1)  # never acks
    live = await c.subscribe("rq", "in.live", q_group="w", ack_wait_in_secs=1)
    for i in range(4):
        await c.publish("rq", b"%d" % i)
    got = set()
    while got != {1, 2, 3, 4}:
        m = await live.next()
        got.add(m.sequence)
        await live.ack(m)
