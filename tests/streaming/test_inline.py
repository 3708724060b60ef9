"""Inline subscriptions on a nats-py connection (streaming/inline.py), against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from stanfleet.streaming.inline import InlineSubscriptions, InlineUnsupported


async def test_raw_messages_in_order_and_answers_before_later_callbacks(broker):
    """The store-ack rule: an answer written inline for message k goes out before
    anything a normal callback publishes for a message that arrived after k."""
    server, sender, watcher = [await nats.connect(broker.url) for _ in range(3)]
    try:
        inline = InlineSubscriptions.of(server)
        seen: list[tuple[bytes, bytes, bytes, bytes | None]] = []

        def on_ack(subject, reply, data, headers):
            seen.append((subject, reply, data, headers))
            inline.publish("out", b"ack " + data)

        async def on_delivery(msg):
            await server.publish("out", b"delivery " + msg.data)

        await inline.subscribe("acks.*", on_ack)
        await server.subscribe("deliveries", cb=on_delivery)
        got: list[bytes] = []
        done = asyncio.Event()

        async def on_out(msg):
            got.append(msg.data)
            if len(got) == 400:
                done.set()
        await watcher.subscribe("out", cb=on_out)
        await server.flush()
        await watcher.flush()
        for i in range(200):
            await sender.publish(f"acks.{i}", b"%d" % i, reply="r",
                                 headers={"K": "v"} if i % 2 else None)
            await sender.publish("deliveries", b"%d" % i)
        await sender.flush()
        await asyncio.wait_for(done.wait(), 10)

        assert [d for _, _, d, _ in seen] == [b"%d" % i for i in range(200)]
        assert seen[0][0] == b"acks.0" and seen[0][1] == b"r" and seen[0][3] is None
        assert seen[1][3].startswith(b"NATS/1.0") and b"K: v" in seen[1][3]
        for i in range(200):
            assert got.index(b"ack %d" % i) < got.index(b"delivery %d" % i), i
    finally:
        for c in (server, sender, watcher):
            await c.close()


async def test_publish_outside_a_read_is_written_on_the_next_turn(broker):
    nc, watcher = await nats.connect(broker.url), await nats.connect(broker.url)
    try:
        inline = InlineSubscriptions.of(nc)
        sub = await watcher.subscribe("alone")
        await watcher.flush()
        inline.publish("alone", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"
    finally:
        await nc.close()
        await watcher.close()


async def test_one_instance_per_client_and_a_forgotten_subscription_is_quiet(broker):
    nc = await nats.connect(broker.url)
    try:
        first = InlineSubscriptions.of(nc)
        assert InlineSubscriptions.of(nc) is first
        calls = []
        sub = await first.subscribe("q", lambda *a: calls.append(a))
        first.forget(sub)
        await sub.unsubscribe()
        # A normal subscription still goes through nats-py's own path.
        normal = await nc.subscribe("q")
        await nc.publish("q", b"x")
        assert (await normal.next_msg(timeout=5)).data == b"x"
        assert calls == []
    finally:
        await nc.close()


def test_a_client_without_the_internals_is_refused():
    class Bare:
        pass
    with pytest.raises(InlineUnsupported, match="lacks"):
        InlineSubscriptions(Bare())


async def test_a_failing_handler_leaves_the_connection_reading(broker):
    nc, sender = await nats.connect(broker.url), await nats.connect(broker.url)
    try:
        inline = InlineSubscriptions.of(nc)
        got = []

        def handler(subject, reply, data, headers):
            if data == b"bad":
                raise ValueError("a bug in a handler")
            got.append(data)
        await inline.subscribe("h", handler)
        after = await nc.subscribe("after")
        await nc.flush()
        await sender.publish("h", b"bad")
        await sender.publish("h", b"good")
        await sender.publish("after", b"still reading")
        assert (await after.next_msg(timeout=5)).data == b"still reading"
        assert got == [b"good"]
        assert nc.is_connected
    finally:
        await nc.close()
        await sender.close()


async def test_frames_cut_anywhere_between_reads_are_parsed_the_same(broker):
    """Our parser of nats-py's reads (inline.py): a frame cut by the end of a
    read waits for the rest; control lines in between still reach nats-py."""
    nc = await nats.connect(broker.url)
    try:
        inline = InlineSubscriptions.of(nc)
        got = []
        sub = await inline.subscribe("never.published", lambda *a: got.append(a))
        sid = b"%d" % sub._id
        stream = (b"MSG a.b " + sid + b" reply.x 5\r\nhe\r\nl\r\n"
                  b"PING\r\n"
                  b"HMSG c " + sid + b" 18 21\r\nNATS/1.0\r\nK: v\r\n\r\nxyz\r\n"
                  b"MSG d " + sid + b" 0\r\n\r\n")
        want = [(b"a.b", b"reply.x", b"he\r\nl", None),
                (b"c", b"", b"xyz", b"NATS/1.0\r\nK: v\r\n\r\n"),
                (b"d", b"", b"", None)]
        for size in range(1, len(stream) + 1):
            got.clear()
            for i in range(0, len(stream), size):
                await nc._ps.parse(stream[i:i + size])
            assert got == want, size
        assert nc.is_connected
    finally:
        await nc.close()
