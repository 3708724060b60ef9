"""Publish and subscribe against the real streaming server (stan_server)."""

from __future__ import annotations

import asyncio
import time

import pytest
from stanfleet.client import (
    Client,
    ErrBadSubscription,
    ErrInvalidOption,
    ErrSubscriptionRejected,
    Msg,
)
from stanfleet.pb import protocol_pb2 as pb

from .helpers import DEFAULT_WAIT, Collector, connect, publish_all


async def test_sync_publish_returns_the_pub_ack(stan_server):
    sc = await connect(stan_server)
    acks = await publish_all(sc, "hi", [b"hello"] * 20)
    assert all(isinstance(a, pb.PubAck) and a.guid and a.error == "" for a in acks)
    assert len({a.guid for a in acks}) == 20
    assert sc.pending_pub_acks == 0
    await sc.close()


async def test_pub_sub_round_trip(stan_server):
    sc = await connect(stan_server)
    got = Collector()
    sub = await sc.subscribe("devices.3F45.events", cb=got)
    before_ns = time.time_ns()
    await publish_all(sc, "devices.3F45.events", [b"m%d" % i for i in range(10)])
    await got.wait_count(10)
    assert got.seqs == list(range(1, 11))
    assert got.payloads == [b"m%d" % i for i in range(10)]
    m = got.msgs[0]
    assert isinstance(m, Msg) and m.sub is sub
    assert m.subject == "devices.3F45.events"
    assert m.redelivered is False and m.redelivery_count == 0
    # Server timestamps are wall-clock nanoseconds (loose bound: clocks are shared).
    assert m.timestamp > before_ns - 60 * 10**9
    await sc.close()


async def test_async_publish_with_ack_handlers(stan_server):
    sc = await connect(stan_server)
    acks = []
    done = asyncio.Event()

    async def handler(ack):
        acks.append(ack)
        if len(acks) == 200:
            done.set()

    results = [await sc.publish("hi", b"x", ack_handler=handler) for _ in range(200)]
    assert results == [None] * 200
    await asyncio.wait_for(done.wait(), DEFAULT_WAIT)
    assert all(a.error == "" for a in acks) and len({a.guid for a in acks}) == 200
    assert sc.pending_pub_acks == 0

    # A plain (non-async) handler works too.
    sync_got = asyncio.get_running_loop().create_future()
    await sc.publish("hi", b"y", ack_handler=sync_got.set_result)
    assert (await asyncio.wait_for(sync_got, DEFAULT_WAIT)).error == ""
    await sc.close()


async def test_bytes_like_payloads_are_accepted_and_str_is_not(stan_server):
    sc = await connect(stan_server)
    got = Collector()
    await sc.subscribe("foo", cb=got)
    await sc.publish("foo", bytearray(b"ba"))
    await sc.publish("foo", memoryview(b"mv"))
    await got.wait_count(2)
    assert got.payloads == [b"ba", b"mv"]
    with pytest.raises(ErrInvalidOption):
        await sc.publish("foo", "text")
    await sc.close()


async def test_publish_and_subscribe_reject_bad_channels(stan_server):
    sc = await connect(stan_server)
    with pytest.raises(ErrInvalidOption):
        await sc.publish("foo.*", b"x")
    with pytest.raises(ErrInvalidOption):
        await sc.subscribe("foo.>", cb=Collector())
    with pytest.raises(ErrInvalidOption):
        await sc.subscribe("foo")  # no callback
    await sc.close()


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"deliver_all_available": True}, [1, 2, 3, 4, 5]),
        ({"start_at": "first"}, [1, 2, 3, 4, 5]),
        ({"start_at": "sequence", "sequence": 3}, [3, 4, 5]),
        ({"start_at": "last_received"}, [5]),
    ],
)
async def test_start_positions(stan_server, kwargs, expected):
    sc = await connect(stan_server)
    await publish_all(sc, "foo", [b"%d" % i for i in range(1, 6)])
    got = Collector()
    await sc.subscribe("foo", cb=got, **kwargs)
    await sc.publish("foo", b"6")
    await got.wait_for(lambda msgs: msgs and msgs[-1].seq == 6)
    assert got.seqs == expected + [6]
    await sc.close()


async def test_new_only_gets_only_later_messages(stan_server):
    sc = await connect(stan_server)
    await publish_all(sc, "foo", [b"old"] * 3)
    got = Collector()
    await sc.subscribe("foo", cb=got, start_at="new_only")
    await sc.publish("foo", b"new")
    await got.wait_count(1)
    assert got.seqs == [4] and got.payloads == [b"new"]
    await sc.close()


async def test_start_at_time(stan_server):
    sc = await connect(stan_server)
    await publish_all(sc, "foo", [b"a", b"b"])
    got_all = Collector()
    # Far enough back to include everything stored in this test.
    await sc.subscribe("foo", cb=got_all, start_at="time", time=time.time() - 3600)
    await got_all.wait_count(2)
    assert got_all.seqs == [1, 2]
    got_future = Collector()
    # A start time in the future behaves like new_only.
    await sc.subscribe("foo", cb=got_future, start_at="time", time=time.time() + 3600)
    await sc.publish("foo", b"c")
    await got_future.wait_count(1)
    assert got_future.seqs == [3]
    await sc.close()


async def test_manual_acks_drive_delivery_with_max_inflight_one(stan_server):
    sc = await connect(stan_server)
    await publish_all(sc, "foo", [b"%d" % i for i in range(20)])
    got = Collector(ack_with=sc)
    await sc.subscribe("foo", cb=got, deliver_all_available=True, manual_acks=True, max_inflight=1)
    await got.wait_count(20)
    assert got.seqs == list(range(1, 21))
    assert not any(m.redelivered for m in got.msgs)
    await sc.close()


async def test_auto_acks_let_max_inflight_one_progress(stan_server):
    sc = await connect(stan_server)
    await publish_all(sc, "foo", [b"x"] * 10)
    got = Collector()
    await sc.subscribe("foo", cb=got, deliver_all_available=True, max_inflight=1)
    await got.wait_count(10)
    assert got.seqs == list(range(1, 11))
    await sc.close()


async def test_unacked_message_is_redelivered_after_ack_wait(stan_server):
    sc = await connect(stan_server)
    await sc.publish("foo", b"once")
    got = Collector()
    await sc.subscribe(
        "foo", cb=got, deliver_all_available=True, manual_acks=True, max_inflight=1, ack_wait=1
    )
    await got.wait_for(lambda msgs: any(m.redelivered for m in msgs))
    assert {m.seq for m in got.msgs} == {1}
    redelivered = [m for m in got.msgs if m.redelivered]
    assert redelivered[0].redelivery_count >= 1
    # Acking the redelivered copy ends redelivery: a new message now flows.
    await redelivered[0].ack()
    await sc.publish("foo", b"next")
    await got.wait_for(lambda msgs: msgs[-1].seq == 2)
    await sc.close()


async def test_callback_error_goes_to_error_cb_and_message_is_not_acked(stan_server):
    sc = await connect(stan_server)
    errors = []
    seen = Collector()
    boom = RuntimeError("boom")

    async def cb(msg):
        await seen(msg)
        if not msg.redelivered:
            raise boom

    await sc.subscribe("foo", cb=cb, error_cb=errors.append, ack_wait=1)
    await sc.publish("foo", b"x")
    # Not acked because cb raised, so the server redelivers it.
    await seen.wait_for(lambda msgs: any(m.redelivered for m in msgs))
    assert errors and errors[0] is boom
    await sc.close()


async def test_sync_callbacks_are_supported(stan_server):
    sc = await connect(stan_server)
    got = []
    done = asyncio.Event()

    def cb(msg):
        got.append(msg.seq)
        if len(got) == 3:
            done.set()

    await sc.subscribe("foo", cb=cb)
    await publish_all(sc, "foo", [b"a", b"b", b"c"])
    await asyncio.wait_for(done.wait(), DEFAULT_WAIT)
    assert got == [1, 2, 3]
    await sc.close()


async def test_slow_subscription_does_not_block_others(stan_server):
    sc = await connect(stan_server)
    release = asyncio.Event()
    slow_seen = Collector()

    async def slow(msg):
        await slow_seen(msg)
        await release.wait()

    fast = Collector()
    await sc.subscribe("foo", cb=slow)
    await sc.subscribe("foo", cb=fast)
    await publish_all(sc, "foo", [b"1", b"2", b"3"])
    await fast.wait_count(3)
    await slow_seen.wait_count(1)
    assert len(slow_seen.msgs) == 1  # still blocked in its first callback
    release.set()
    await slow_seen.wait_count(3)
    await sc.close()


async def test_unsubscribe_stops_delivery(stan_server):
    sc = await connect(stan_server)
    gone = Collector()
    stays = Collector()
    sub = await sc.subscribe("foo", cb=gone)
    await sc.subscribe("foo", cb=stays)
    await publish_all(sc, "foo", [b"1", b"2"])
    await gone.wait_count(2)
    await sub.unsubscribe()
    await publish_all(sc, "foo", [b"3", b"4"])
    await stays.wait_count(4)
    assert gone.seqs == [1, 2]
    with pytest.raises(ErrBadSubscription):
        await sub.unsubscribe()
    with pytest.raises(ErrBadSubscription):
        await sub.close()
    await sc.close()


async def test_unsubscribe_from_inside_the_callback(stan_server):
    sc = await connect(stan_server)
    done = asyncio.get_running_loop().create_future()
    seen = []

    async def cb(msg):
        seen.append(msg.seq)
        await msg.sub.unsubscribe()
        # Still running (not cancelled) after unsubscribing.
        await asyncio.sleep(0)
        done.set_result(True)

    await sc.subscribe("foo", cb=cb)
    await publish_all(sc, "foo", [b"1", b"2", b"3"])
    await asyncio.wait_for(done, DEFAULT_WAIT)
    assert seen == [1]
    await sc.close()


async def test_close_from_inside_a_callback(stan_server):
    sc = await connect(stan_server)
    done = asyncio.get_running_loop().create_future()

    async def cb(msg):
        await sc.close()
        done.set_result(sc.is_closed)

    await sc.subscribe("foo", cb=cb)
    await sc.publish("foo", b"bye")
    assert await asyncio.wait_for(done, DEFAULT_WAIT) is True


async def test_second_durable_with_same_name_is_rejected(stan_server):
    sc = await connect(stan_server)
    await sc.subscribe("foo", cb=Collector(), durable_name="dur")
    before = len(sc.nc._subs)
    with pytest.raises(ErrSubscriptionRejected):
        await sc.subscribe("foo", cb=Collector(), durable_name="dur")
    assert len(sc.nc._subs) == before  # the failed subscription left nothing behind
    await sc.close()


async def test_pending_queue_size_counts_undelivered_messages(stan_server):
    sc = await connect(stan_server)
    release = asyncio.Event()
    seen = Collector()

    async def cb(msg):
        await seen(msg)
        await release.wait()

    sub = await sc.subscribe("foo", cb=cb)
    await publish_all(sc, "foo", [b"x"] * 5)
    await seen.wait_count(1)
    await asyncio.wait_for(_until(lambda: sub.pending_queue_size == 4), DEFAULT_WAIT)
    release.set()
    await seen.wait_count(5)
    assert sub.pending_queue_size == 0
    await sc.close()


async def _until(predicate):
    # The queue fills from the socket; no event exists for "n buffered".
    while not predicate():
        await asyncio.sleep(0.01)


def test_client_is_importable_under_the_stan_py_alias():
    from stanfleet.client import Client as STAN

    assert STAN is Client
