"""A durable subscriber that crashed together with the server gets its unacked
messages at once when it resumes after the restart, as from the Go server: not
after ack_wait (60 s here)."""

from __future__ import annotations

import asyncio
import time

from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.jsapi import list_consumers
from stanfleet.streaming.naming import Subjects

from .acks import durable_acked
from .rawstan import RawStan
from .serverproc import ServerProcess, free_port

ACK_WAIT = 60
WIDE = 300  # durables on one channel: more than JetStream lists in one page (256)
PROMPT = 10  # seconds: far below ACK_WAIT, far above a loaded machine's latency


async def test_durable_resumed_after_a_crash_is_redelivered_at_once(tmp_path):
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file",
                         "-dir", str(tmp_path / "d"), log_path=str(tmp_path / "server.log"))
    await proc.start()
    try:
        c = await RawStan.open(url, "test-cluster", "crasher")
        assert (await c.connect()).error == ""
        sub = await c.subscribe("orders", "in.orders", durable_name="dur",
                                ack_wait_in_secs=ACK_WAIT, start_position=pb.First)
        for i in range(1, 4):
            assert (await c.publish("orders", b"%d" % i)).error == ""
        got = [await sub.next() for _ in range(3)]
        assert [m.sequence for m in got] == [1, 2, 3]
        await sub.ack(got[0])
        # Client acks are fire-and-forget (and pings may be read on another of
        # the server's connections than acks): wait until JetStream has it.
        await durable_acked(c.nc, "test-cluster", "orders", "crasher", "dur", 1)
        await proc.kill()
        await c.vanish()  # the subscriber's process died too

        await proc.start()
        again = await RawStan.open(url, "test-cluster", "crasher")
        assert (await again.connect()).error == ""  # replaces the dead session
        started = time.monotonic()
        sub = await again.subscribe("orders", "in.orders2", durable_name="dur",
                                    ack_wait_in_secs=ACK_WAIT, start_position=pb.First)
        seen = {}
        while set(seen) != {2, 3}:
            m = await sub.next(timeout=PROMPT)
            seen[m.sequence] = m
            await sub.ack(m)
        assert time.monotonic() - started < PROMPT
        assert seen[2].redelivered and seen[3].redelivered
        await again.close()
    finally:
        await proc.stop()


async def test_more_durables_than_one_consumer_listing_are_restored_after_a_crash(tmp_path):
    """A restart finds its subscriptions' consumers in JetStream's listing,
    256 to a page: all 300 durables of one channel deliver again, at once."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file",
                         "-dir", str(tmp_path / "d"), log_path=str(tmp_path / "server.log"))
    await proc.start()
    back = asyncio.Event()

    async def reconnected() -> None:
        back.set()

    try:
        c = await RawStan.open(url, "test-cluster", "wide", reconnected_cb=reconnected)
        assert (await c.connect()).error == ""
        subs = [await c.subscribe("wide", f"in.w{i}", durable_name=f"d{i}",
                                  ack_wait_in_secs=ACK_WAIT) for i in range(WIDE)]
        assert [s.error for s in subs] == [""] * WIDE
        await proc.kill()
        await proc.start()
        await asyncio.wait_for(back.wait(), PROMPT)  # the inboxes are subscribed again
        await c.nc.flush()
        assert (await c.publish("wide", b"all")).error == ""  # the session was restored too
        got = await asyncio.gather(*(s.next(timeout=PROMPT) for s in subs))
        assert {(m.sequence, m.data) for m in got} == {(1, b"all")}
        listed = await list_consumers(c.nc.jsm(), Subjects("test-cluster").stream_for("wide"))
        assert len(listed) == WIDE  # all pages read, not only the first 256
        await c.close()
    finally:
        await proc.stop()


async def test_replace_durable_hands_the_durable_to_the_new_subscriber(make_stan_server):
    stan = await make_stan_server(replace_durable=True)
    c = await RawStan.open(stan.nats_url, stan.cluster_id, "twice")
    assert (await c.connect()).error == ""
    first = await c.subscribe("jobs", "in.first", durable_name="d", start_position=pb.First)
    assert (await c.publish("jobs", b"1")).error == ""
    m = await first.next()
    await first.ack(m)
    second = await c.subscribe("jobs", "in.second", durable_name="d", start_position=pb.First)
    assert second.error == ""  # not "stan: duplicate durable registration"
    assert (await c.publish("jobs", b"2")).error == ""
    m = await second.next()
    assert (m.sequence, m.data) == (2, b"2")  # the position moved over with the durable
    assert first.nothing_pending()
    await c.close()


async def test_without_replace_durable_a_second_registration_is_refused(stan_server):
    c = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, "twice")
    assert (await c.connect()).error == ""
    await c.subscribe("jobs", "in.first", durable_name="d")
    again = await c.subscribe("jobs", "in.second", durable_name="d")
    assert again.error == "stan: duplicate durable registration"
    await c.close()


async def test_a_repeated_durable_subscribe_is_answered_with_the_registered_one(stan_server):
    """A device whose subscribe timed out asks again with the same inbox. The
    first may have been registered meanwhile: the repeat gets that subscription
    (one member, messages delivered once), not "duplicate durable", which cost
    the device a whole new session in a connect storm."""
    c = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, "repeater")
    assert (await c.connect()).error == ""
    req = pb.SubscriptionRequest(client_id="repeater", subject="cfg", inbox="in.cfg",
                                 durable_name="d", max_in_flight=8, ack_wait_in_secs=30,
                                 start_position=pb.First).SerializeToString()

    async def ask() -> pb.SubscriptionResponse:
        r = await c.nc.request(c.resp.sub_requests, req, timeout=10)
        return pb.SubscriptionResponse.FromString(r.data)

    got: asyncio.Queue[pb.MsgProto] = asyncio.Queue()

    async def on_msg(m) -> None:
        await got.put(pb.MsgProto.FromString(m.data))

    await c.nc.subscribe("in.cfg", cb=on_msg)
    # Two in flight at once (the repeat waits for the registration), then a late one.
    first, second = await asyncio.gather(ask(), ask())
    third = await ask()
    assert first.error == second.error == third.error == ""
    assert first.ack_inbox == second.ack_inbox == third.ack_inbox
    other = await c.subscribe("cfg", "in.other", durable_name="d")
    assert other.error == "stan: duplicate durable registration"
    for i in (1, 2, 3, 4):
        assert (await c.publish("cfg", b"%d" % i)).error == ""
        m = await asyncio.wait_for(got.get(), 10)
        assert m.sequence == i  # a second member would have had its own copy first
        await c.nc.publish(first.ack_inbox,
                           pb.Ack(subject="cfg", sequence=i).SerializeToString())
    await c.close()
