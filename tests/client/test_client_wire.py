"""The client's wire behaviour, against a scripted fake server on a real
nats-server: what it sends, how it answers heartbeats, how it treats silent
or malformed peers."""

from __future__ import annotations

import asyncio
import logging

import nats
import pytest
from stanfleet.client import (
    Client,
    ErrConnectionClosed,
    ErrConnectReqTimeout,
    ErrMaxPings,
    ErrNoResponders,
    ErrTimeout,
)
from stanfleet.pb import protocol_pb2 as pb

from .fakestan import FakeStan
from .helpers import DEFAULT_WAIT, Collector, connect


@pytest.fixture
async def fake(broker):
    f = await FakeStan(broker.url).start()
    yield f
    await f.stop()


async def next_item(queue: asyncio.Queue):
    return await asyncio.wait_for(queue.get(), DEFAULT_WAIT)


async def test_connect_request_uses_protocol_one_and_a_fresh_conn_id(fake):
    a = await connect(fake, "alpha", ping_interval=7, ping_max_out=4)
    b = await connect(fake, "beta")
    ra, rb = await next_item(fake.connect_requests), await next_item(fake.connect_requests)
    assert ra.client_id == "alpha" and ra.protocol == 1
    assert (ra.ping_interval, ra.ping_max_out) == (7, 4)
    assert ra.heartbeat_inbox and ra.heartbeat_inbox != rb.heartbeat_inbox
    assert len(ra.conn_id) > 0 and ra.conn_id != rb.conn_id
    await a.close()
    await b.close()


async def test_client_answers_heartbeats_with_an_empty_reply(fake):
    sc = await connect(fake)
    req = await next_item(fake.connect_requests)
    reply = await fake.nc.request(req.heartbeat_inbox, b"", timeout=DEFAULT_WAIT)
    assert reply.data == b""
    await sc.close()


async def test_publish_uses_the_subjects_from_the_connect_response(fake):
    sc = await connect(fake, "pubber")
    creq = await next_item(fake.connect_requests)
    ack = await sc.publish("devices.3F45.events", b"21.5")
    nmsg, pub = await next_item(fake.pub_msgs)
    assert nmsg.subject == "fake.pub.devices.3F45.events"
    assert pub.client_id == "pubber" and pub.subject == "devices.3F45.events"
    assert pub.data == b"21.5" and pub.conn_id == creq.conn_id
    assert pub.guid == ack.guid and ack.error == ""
    # One reply inbox prefix for all pub acks: only the last token differs.
    await sc.publish("devices.3F45.events", b"21.6")
    nmsg2, _ = await next_item(fake.pub_msgs)
    assert nmsg.reply.rsplit(".", 1)[0] == nmsg2.reply.rsplit(".", 1)[0]
    assert nmsg.reply != nmsg2.reply
    await sc.close()


async def test_subscription_request_and_auto_ack_use_server_subjects(fake):
    sc = await connect(fake, "subber")
    got = Collector()
    sub = await sc.subscribe("temps", cb=got, durable_name="d", queue="q", start_at="first")
    req = await next_item(fake.sub_requests)
    assert (req.client_id, req.subject, req.durable_name, req.q_group) == (
        "subber",
        "temps",
        "d",
        "q",
    )
    assert req.inbox == sub.inbox and req.start_position == pb.First
    assert sub.ack_inbox == "fake.acks.1"
    await fake.deliver(
        sub.inbox, pb.MsgProto(sequence=5, subject="temps", data=b"x").SerializeToString()
    )
    await got.wait_count(1)
    ack = await next_item(fake.acks)
    assert (ack.subject, ack.sequence) == ("temps", 5)
    await sc.close()


async def test_malformed_frames_are_dropped_and_the_client_keeps_working(fake, caplog):
    sc = await connect(fake)
    got = Collector()
    sub = await sc.subscribe("temps", cb=got)
    with caplog.at_level(logging.WARNING, logger="stanfleet.client"):
        await fake.deliver(sub.inbox, b"\xff\xff\xff\xff")
        await fake.deliver(sub.ack_inbox.replace("acks.1", "junk"), b"")  # unrelated noise
        # A malformed PubAck on the client's ack inbox, then a good message.
        fake.ack_publishes = False
        pub_task = asyncio.ensure_future(sc.publish("temps", b"p", ack_wait=60))
        nmsg, pub = await next_item(fake.pub_msgs)
        await fake.nc.publish(nmsg.reply, b"\xff\xff\xff")
        await fake.nc.publish(nmsg.reply, pb.PubAck(guid=pub.guid).SerializeToString())
        ack = await asyncio.wait_for(pub_task, DEFAULT_WAIT)
        await fake.deliver(sub.inbox, pb.MsgProto(sequence=1, subject="temps").SerializeToString())
        await got.wait_count(1)
    assert ack.guid == pub.guid
    assert got.seqs == [1]
    assert "malformed MsgProto" in caplog.text and "malformed PubAck" in caplog.text
    await sc.close()


async def test_sync_publish_times_out_with_err_timeout(fake):
    fake.ack_publishes = False
    sc = await connect(fake)
    with pytest.raises(ErrTimeout) as info:
        await sc.publish("temps", b"x", ack_wait=0.2)
    assert isinstance(info.value, asyncio.TimeoutError)
    assert sc.pending_pub_acks == 0
    await sc.close()


async def test_a_publish_without_a_pub_ack_is_sent_again_with_its_guid(fake):
    """attempts: a store sent while the channel's stream elects a
    leader gets no answer at all; the same PubMsg (same guid, which JetStream
    stores once) goes again after ack_wait, and its PubAck ends the publish."""
    fake.ack_publishes = False
    sc = await connect(fake)
    task = asyncio.ensure_future(sc.publish("temps", b"x", ack_wait=0.3, attempts=3))
    _, first = await next_item(fake.pub_msgs)  # not answered: lost
    again, second = await next_item(fake.pub_msgs)
    assert (second.guid, second.data) == (first.guid, b"x")
    await fake.nc.publish(again.reply, pb.PubAck(guid=second.guid).SerializeToString())
    ack = await asyncio.wait_for(task, DEFAULT_WAIT)
    assert ack.guid == first.guid and sc.pending_pub_acks == 0
    with pytest.raises(ErrTimeout):  # every attempt unanswered: the timeout, as before
        await sc.publish("temps", b"y", ack_wait=0.2, attempts=3)
    assert fake.pub_msgs.qsize() == 3 and sc.pending_pub_acks == 0
    await sc.close()


async def test_ack_handler_gets_a_timeout_error_after_ack_wait(fake):
    fake.ack_publishes = False
    sc = await connect(fake)
    got = asyncio.get_running_loop().create_future()
    assert await sc.publish("temps", b"x", ack_handler=got.set_result, ack_wait=0.2) is None
    _, pub = await next_item(fake.pub_msgs)
    err = await asyncio.wait_for(got, DEFAULT_WAIT)
    assert isinstance(err, ErrTimeout) and err.guid == pub.guid and err.error
    await sc.close()


async def test_max_pub_acks_inflight_blocks_further_publishes(fake):
    fake.ack_publishes = False
    sc = await connect(fake, max_pub_acks_inflight=2)
    handler_calls = []
    for i in range(2):
        await sc.publish("temps", b"%d" % i, ack_handler=handler_calls.append)
    third = asyncio.ensure_future(sc.publish("temps", b"2", ack_handler=handler_calls.append))
    first_nmsg, first = await next_item(fake.pub_msgs)
    await next_item(fake.pub_msgs)
    # The third publish must not reach the server while two acks are pending.
    await fake.nc.flush()
    await sc.nc.flush()
    assert not third.done() and fake.pub_msgs.empty()
    await fake.nc.publish(first_nmsg.reply, pb.PubAck(guid=first.guid).SerializeToString())
    await asyncio.wait_for(third, DEFAULT_WAIT)
    _, pub3 = await next_item(fake.pub_msgs)
    assert pub3.data == b"2"
    assert [a.guid for a in handler_calls] == [first.guid]
    await sc.close()


async def test_pending_publishes_fail_when_the_client_closes(fake):
    fake.ack_publishes = False
    sc = await connect(fake)
    got = asyncio.get_running_loop().create_future()
    await sc.publish("temps", b"x", ack_handler=got.set_result)
    sync_pub = asyncio.ensure_future(sc.publish("temps", b"y"))
    await next_item(fake.pub_msgs)
    await next_item(fake.pub_msgs)
    await sc.close()
    assert isinstance(await asyncio.wait_for(got, DEFAULT_WAIT), ErrConnectionClosed)
    with pytest.raises(ErrConnectionClosed):
        await sync_pub
    with pytest.raises(ErrConnectionClosed):
        await sc.publish("temps", b"z")


async def test_publish_without_a_server_listening_fails_fast(broker):
    # A fake that answers connect but has nothing on the publish subject.
    fake = await FakeStan(broker.url).start()
    fake.prefix = "nobody"  # later subjects point where nothing listens
    sc = Client()
    await sc.connect(fake.cluster_id, "lonely", servers=[broker.url])
    with pytest.raises(ErrNoResponders):
        await sc.publish("temps", b"x", ack_wait=60)
    await fake.stop()
    await sc.nc.close()


async def test_unanswered_pings_close_the_client_and_call_conn_lost_cb_once(fake):
    fake.answer_pings = False
    calls = []
    lost = asyncio.get_running_loop().create_future()

    async def conn_lost_cb(err):
        calls.append(err)
        if not lost.done():
            lost.set_result(err)

    sc = await connect(fake, ping_interval=0.05, ping_max_out=3, conn_lost_cb=conn_lost_cb)
    err = await asyncio.wait_for(lost, DEFAULT_WAIT)
    assert isinstance(err, ErrMaxPings)
    assert str(err) == "stan: connection lost due to PING failure"
    assert fake.pings.qsize() == 3  # exactly ping_max_out pings went out unanswered
    assert sc.is_closed and sc.nc.is_closed  # it owned its NATS connection
    with pytest.raises(ErrConnectionClosed):
        await sc.publish("temps", b"x")
    with pytest.raises(ErrConnectionClosed):
        await sc.close()
    assert len(calls) == 1


async def test_ping_error_response_reports_the_server_text(fake):
    lost = asyncio.get_running_loop().create_future()
    fake.ping_error = "client has been replaced or is no longer registered"
    nc = await nats.connect(fake.url)
    sc = Client()
    await sc.connect(
        fake.cluster_id, "pinged", nats=nc, ping_interval=0.05, conn_lost_cb=lost.set_result
    )
    err = await asyncio.wait_for(lost, DEFAULT_WAIT)
    assert str(err) == "client has been replaced or is no longer registered"
    # A borrowed NATS connection is left open.
    assert nc.is_connected
    await nc.close()


async def test_connect_to_a_missing_cluster_raises_connect_timeout(broker):
    sc = Client()
    with pytest.raises(ErrConnectReqTimeout):
        await sc.connect("no-such-cluster", "c1", servers=[broker.url], connect_timeout=0.5)
    assert sc.nc.is_closed  # the connection it opened is not leaked


async def test_loop_argument_is_accepted_and_ignored(fake):
    sc = Client()
    await sc.connect(
        fake.cluster_id, "old-code", servers=[fake.url], loop=asyncio.get_running_loop()
    )
    assert sc.is_connected
    await sc.close()
    assert (await next_item(fake.close_requests)).client_id == "old-code"
