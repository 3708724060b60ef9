"""Stores sent as groups (ChannelStore._send_groups): one store-ack a group,
and a group JetStream did not store as counted sent again one store at a time,
so that a PubAck still means stored."""

from __future__ import annotations

import logging

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import channels as channels_mod

from .test_protocol import client

FALLBACK = "not stored as counted"


async def stored(stan, c, channel: str) -> list[tuple[bytes, str | None]]:
    """The channel's stream, in order: (data, Nats-Msg-Id) per message."""
    jsm = c.nc.jsm()
    stream = stan.server.channels.channels[channel].stream
    info = await jsm.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await jsm.get_msg(stream, seq)
        out.append((m.data, (m.headers or {}).get("Nats-Msg-Id")))
    return out


async def store_group(stan, c, channel: str, msgs: list[tuple[str, bytes]]) -> list[pb.PubAck]:
    """Stores taken in one go and flushed once, as from one read of the relay:
    one group. Their PubAcks, in order."""
    store = stan.server.channels
    inbox = c.nc.new_inbox()
    sub = await c.nc.subscribe(inbox)
    await c.nc.flush()
    ch = store.channels[channel]
    for guid, data in msgs:
        store._store(ch, inbox, guid, data)
    store.relay.flush()
    return [pb.PubAck.FromString((await sub.next_msg(timeout=10)).data) for _ in msgs]


async def started(stan, channel: str):
    """A client, and the channel with one message stored: its count is known."""
    c = await client(stan)
    assert (await c.publish(channel, b"m0", guid="g0")).error == ""
    assert stan.server.channels.channels[channel].next_seq == 1
    return c


async def test_a_group_is_answered_by_one_store_ack_and_stored_in_order(stan_server, caplog):
    caplog.set_level(logging.DEBUG, logger="stanfleet.streaming.channels")
    c = await started(stan_server, "grp")
    acks = await store_group(stan_server, c, "grp", [(f"g{i}", b"m%d" % i) for i in range(1, 6)])
    assert [(a.guid, a.error) for a in acks] == [(f"g{i}", "") for i in range(1, 6)]
    assert await stored(stan_server, c, "grp") == [(b"m%d" % i, f"g{i}") for i in range(6)]
    assert FALLBACK not in caplog.text
    assert stan_server.server.channels.channels["grp"].next_seq == 6


async def test_a_duplicate_inside_a_group_sends_the_group_again_one_by_one(stan_server, caplog):
    """g0 again in the middle: JetStream drops it silently (no reply asked), so
    the last store finds the stream one short and is refused; sent again, each
    gets its own answer and nothing is stored twice."""
    caplog.set_level(logging.DEBUG, logger="stanfleet.streaming.channels")
    c = await started(stan_server, "grp")
    acks = await store_group(stan_server, c, "grp",
                             [("g1", b"m1"), ("g2", b"m2"), ("g0", b"again"), ("g4", b"m4")])
    assert [(a.guid, a.error) for a in acks] == [(g, "") for g in ("g1", "g2", "g0", "g4")]
    assert await stored(stan_server, c, "grp") == [
        (b"m0", "g0"), (b"m1", "g1"), (b"m2", "g2"), (b"m4", "g4")]
    assert "group of 4 " + FALLBACK in caplog.text
    # The count is learnt again from those answers: the next group goes whole.
    caplog.clear()
    acks = await store_group(stan_server, c, "grp", [("g5", b"m5"), ("g6", b"m6")])
    assert [a.error for a in acks] == ["", ""]
    assert FALLBACK not in caplog.text
    assert [d for d, _ in await stored(stan_server, c, "grp")][-2:] == [b"m5", b"m6"]


async def test_another_writer_on_the_stream_makes_the_group_go_again(stan_server, caplog):
    caplog.set_level(logging.DEBUG, logger="stanfleet.streaming.channels")
    c = await started(stan_server, "grp")
    ch = stan_server.server.channels.channels["grp"]
    await c.nc.jetstream().publish(ch.store_subject, b"foreign")
    acks = await store_group(stan_server, c, "grp", [("a", b"a"), ("b", b"b"), ("c", b"c")])
    assert [a.error for a in acks] == ["", "", ""]
    assert await stored(stan_server, c, "grp") == [
        (b"m0", "g0"), (b"foreign", None), (b"a", "a"), (b"b", "b"), (b"c", "c")]
    assert "group of 3 " + FALLBACK in caplog.text


async def test_a_group_sent_again_goes_before_what_was_taken_after_it(stan_server, caplog):
    """A channel has one group in flight: what it takes meanwhile waits. So when
    the group is refused (a duplicate inside) and sent again store by store,
    the later stores are stored after it, in the order published."""
    caplog.set_level(logging.DEBUG, logger="stanfleet.streaming.channels")
    c = await started(stan_server, "grp")
    store = stan_server.server.channels
    inbox = c.nc.new_inbox()
    sub = await c.nc.subscribe(inbox)
    await c.nc.flush()
    ch = store.channels["grp"]
    for batch in ([("a", b"a"), ("g0", b"again"), ("b", b"b")], [("c", b"c"), ("d", b"d")]):
        for guid, data in batch:
            store._store(ch, inbox, guid, data)
        store.relay.flush()
    assert ch.group_out and len(ch.group) == 2  # the second waits for the first
    acks = [pb.PubAck.FromString((await sub.next_msg(timeout=10)).data) for _ in range(5)]
    assert sorted((a.guid, a.error) for a in acks) == [
        ("a", ""), ("b", ""), ("c", ""), ("d", ""), ("g0", "")]
    assert await stored(stan_server, c, "grp") == [
        (b"m0", "g0"), (b"a", "a"), (b"b", "b"), (b"c", "c"), (b"d", "d")]
    assert "group of 3 " + FALLBACK in caplog.text


async def test_a_pipelined_burst_with_a_republished_guid_is_stored_once_in_order(stan_server):
    """The real path: PubMsgs held at nats-server while the relay is paused,
    then read at once (groups), one guid sent twice."""
    c = await started(stan_server, "burst")
    relay = stan_server.server.channels.relay
    inbox = c.nc.new_inbox()
    sub = await c.nc.subscribe(inbox)
    relay.pause()
    guids = [f"b{i}" for i in range(200)]
    guids[120] = "b30"  # a republish: stored once, answered without error
    for i, guid in enumerate(guids):
        pm = pb.PubMsg(client_id=c.client_id, guid=guid, subject="burst", data=b"%d" % i,
                       conn_id=c.conn_id)
        await c.nc.publish(f"{c.resp.pub_prefix}.burst", pm.SerializeToString(), reply=inbox)
    await c.nc.flush()
    relay.resume()
    acks = [pb.PubAck.FromString((await sub.next_msg(timeout=10)).data) for _ in guids]
    assert sorted(a.guid for a in acks) == sorted(guids)
    assert all(a.error == "" for a in acks)
    expected = [(b"m0", "g0")] + [(b"%d" % i, g) for i, g in enumerate(guids) if i != 120]
    assert await stored(stan_server, c, "burst") == expected


@pytest.mark.parametrize("lost", ["group", "single"])
async def test_a_store_lost_in_an_election_is_sent_again(stan_server, monkeypatch, lost):
    """JetStream loses stores in a leader election, without an answer. A lost
    group is sent again store by store, a lost store again as it was, once
    unanswered for RESEND_AFTER (short here), not after pub_ack_timeout as a
    failure: the registry's stores have no publisher to retry them, and every
    new channel's first message waits for its registry entry."""
    monkeypatch.setattr(channels_mod, "RESEND_AFTER", 0.5)
    c = await started(stan_server, "lossy")
    store = stan_server.server.channels
    send = store.relay.send
    dropped = []

    def lossy_send(raw):
        if not dropped and store.channels["lossy"].store_subject_b in raw:
            dropped.append(raw)
            return
        send(raw)
    store.relay.send = lossy_send
    msgs = [("a", b"a"), ("b", b"b"), ("c", b"c")] if lost == "group" else [("a", b"a")]
    acks = await store_group(stan_server, c, "lossy", msgs)
    assert dropped and [(a.guid, a.error) for a in acks] == [(g, "") for g, _ in msgs]
    assert await stored(stan_server, c, "lossy") == [(b"m0", "g0")] + [(d, g) for g, d in msgs]
