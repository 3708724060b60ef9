"""Property-based fuzzing of the streaming server with hostile input.

Hypothesis generates batches of hostile messages (random bytes and mutated
valid protobuf) for every `_STAN.*` subject the server listens on, with and
without a reply subject. Meanwhile a well-behaved client publishes to its own
channel and receives through a durable subscription. Invariants:

* the well-behaved client gets every message it published, in order, once
  (a repeat only with redelivered=true), and all its requests succeed;
* every hostile request with a reply subject gets a reply of the right type
  (an error is fine). Acks are fire-and-forget in STAN: they get no reply;
* the server's background tasks are alive, its NATS connection never dropped,
  no handler logged a traceback, and it still serves a fresh client.

Hypothesis runs in a worker thread (its API is synchronous); each example's
batch is sent on the test's event loop, where the server and the clients run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random

import nats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stanfleet.pb import protocol_pb2 as pb

from .rawstan import RawStan

MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload
REPLY_TIMEOUT = 20.0
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
HONEST_CHANNEL = "honest.events"
HONEST_DURABLE = "honest-durable"


# -- protobuf wire helpers ----------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _unknown_field(number: int, wire_type: int, value: bytes | int) -> bytes:
    key = _varint((number << 3) | wire_type)
    if wire_type == 0:
        return key + _varint(int(value))
    if wire_type == 1:
        return key + int(value).to_bytes(8, "little")
    if wire_type == 5:
        return key + int(value).to_bytes(4, "little")
    if wire_type == 2:
        return key + _varint(len(value)) + value
    return key  # 3/4 (groups), 6/7 (invalid): a decoder must cope


def _filler(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- strategies ----------------------------------------------------------------------

INT32 = st.one_of(st.sampled_from([-(2**31), -1, 0, 1, 2, 2**31 - 1]),
                  st.integers(-(2**31), 2**31 - 1))
UINT32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
UINT64 = st.one_of(st.sampled_from([0, 1, 2, 3, 10**6, 2**63, 2**64 - 1]),
                   st.integers(0, 2**64 - 1))
INT64 = st.one_of(st.sampled_from([-(2**63), -1, 0, 1, 10**9, 2**63 - 1]),
                  st.integers(-(2**63), 2**63 - 1))
ODD_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "a b", "a.b", "a..b", "*", ">", "a.*", "a.>", "\x00", "\t",
                     "\r\n", "é", "漢字", "\U0001f600", "_XX", "%00", "../..", "a\nb"]),
    st.integers(300, 3000).map(lambda n: "d" * n))
SIZES = st.one_of(st.integers(0, 64), st.integers(0, MAX_PAYLOAD),
                  st.integers(MAX_PAYLOAD - 256, MAX_PAYLOAD))


class Ctx:
    """Names known at run time that hostile messages mix into their fields."""

    def __init__(self, cid: str, honest: RawStan, honest_sub, victim: RawStan, victim_sub,
                 ghost_id: str):
        self.cid = cid
        self.honest = honest
        self.honest_sub = honest_sub
        self.victim = victim
        self.victim_sub = victim_sub
        self.ghost_id = ghost_id
        self.honest_stream = ""
        self.live_ack_inboxes = [victim_sub.ack_inbox, honest_sub.ack_inbox]


def strategies(ctx: Ctx):
    cid = ctx.cid
    client_ids = st.one_of(
        st.sampled_from([ctx.victim.client_id, ctx.ghost_id, "unknown-client", "fz-new"]),
        st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), ODD_TEXT)
    # Unsubscribe and close carry no session proof in STAN: with the well-behaved
    # client's ID they would legitimately end it. Everyone else's ID is fair game.
    foreign_ids = client_ids.filter(lambda c: c != ctx.honest.client_id)
    # ...and a connect may try to steal the well-behaved client's ID: it answers
    # its heartbeats, so the server must refuse.
    connect_ids = st.one_of(client_ids, st.just(ctx.honest.client_id))
    conn_ids = st.one_of(st.sampled_from([b"", ctx.victim.conn_id, ctx.honest.conn_id]),
                         st.binary(max_size=24))
    valid_channels = st.one_of(
        st.sampled_from(["fz.a", "fz.b", "fz.victim", "fz.a.b.c", "stanfleet.channels"]),
        st.from_regex(r"fz\.[a-z0-9]{1,6}(\.[A-Za-z0-9_$-]{1,6}){0,2}", fullmatch=True))
    sub_channels = st.one_of(valid_channels, st.just(HONEST_CHANNEL), ODD_TEXT)
    server_subjects = [f"_STAN.discover.{cid}", f"_STAN.discover.{cid}.pings",
                       f"_STAN.sub.{cid}", f"_STAN.close.{cid}", f"_STAN.pub.{cid}.fz.a",
                       f"_STAN.pub.{cid}.{HONEST_CHANNEL}", f"_STAN.acks.{cid}.x",
                       ctx.honest_sub.ack_inbox,
                       # The server's own back end: delivering there would store
                       # into a channel or call the JetStream API on our behalf.
                       f"_STAN.store.{cid}.{HONEST_CHANNEL}", f"_STAN.store.{cid}.fz.a",
                       f"$JS.API.STREAM.DELETE.{ctx.honest_stream}",
                       f"$JS.API.STREAM.PURGE.{ctx.honest_stream}"]
    inboxes = st.one_of(
        st.from_regex(r"fz\.in\.[a-z0-9]{1,8}", fullmatch=True),
        st.sampled_from(["", " ", "a b", "fz.*", "fz.>", ">", "*", "fz..x", ".fz", "fz.",
                         "fz.in\t", "x" * 2000, "fz.in.\x00", ctx.victim_sub.inbox,
                         *server_subjects]),
        ODD_TEXT)
    hb_inboxes = st.one_of(
        st.from_regex(r"fzhb\.[a-z0-9]{1,8}", fullmatch=True),  # answered by the fuzzer
        st.from_regex(r"nohb\.[a-z0-9]{1,8}", fullmatch=True),  # nobody answers
        st.sampled_from([ctx.honest.hb_inbox, ctx.victim.hb_inbox, "", "a b", "hb.*", ">",
                         *server_subjects]),
        ODD_TEXT)
    # The pool grows during the run: index into it rather than sampling the list,
    # so that hypothesis sees the same draws for the same choices.
    live_ack_inbox = st.integers(0, 2**16).map(
        lambda i: ctx.live_ack_inboxes[i % len(ctx.live_ack_inboxes)])
    guids = st.one_of(st.text(min_size=1, max_size=24), st.just(""), ODD_TEXT,
                      st.integers(1000, 100_000).map(lambda n: "g" * n))

    @st.composite
    def connect(draw):
        if draw(st.booleans()):  # plausible: a fresh session, maybe of a known client ID
            return pb.ConnectRequest(
                client_id=draw(st.sampled_from([ctx.victim.client_id, ctx.honest.client_id,
                                                ctx.ghost_id, "fz-1", "fz-2"])),
                heartbeat_inbox=draw(st.one_of(st.just(ctx.victim.hb_inbox), hb_inboxes)),
                protocol=1, conn_id=draw(st.binary(min_size=8, max_size=8)),
                ping_interval=draw(INT32), ping_max_out=draw(INT32)).SerializeToString()
        return pb.ConnectRequest(
            client_id=draw(st.one_of(connect_ids,
                                     st.from_regex(r"fz-[A-Za-z0-9_-]{1,8}", fullmatch=True))), heartbeat_inbox=draw(hb_inboxes),
            protocol=draw(INT32), conn_id=draw(conn_ids), ping_interval=draw(INT32),
            ping_max_out=draw(INT32)).SerializeToString()

    @st.composite
    def subscribe(draw):
        if draw(st.booleans()):  # plausible: a live client, sane numbers, odd names
            return pb.SubscriptionRequest(
                client_id=draw(st.sampled_from([ctx.victim.client_id, ctx.honest.client_id])),
                subject=draw(st.one_of(valid_channels, st.just(HONEST_CHANNEL))),
                q_group=draw(st.one_of(st.just(""), ODD_TEXT)),
                inbox=draw(st.one_of(inboxes, st.sampled_from(server_subjects))),
                max_in_flight=draw(st.integers(1, 4096)),
                ack_wait_in_secs=draw(st.integers(1, 60)),
                durable_name=draw(st.one_of(st.just(""), st.just(HONEST_DURABLE), ODD_TEXT)),
                start_position=draw(st.integers(0, 4)),
                start_sequence=draw(st.one_of(st.integers(0, 50), UINT64)),
                start_time_delta=draw(INT64)).SerializeToString()
        return pb.SubscriptionRequest(
            client_id=draw(st.one_of(client_ids, st.just(ctx.honest.client_id))),
            subject=draw(sub_channels), q_group=draw(st.one_of(st.just(""), ODD_TEXT)),
            inbox=draw(inboxes), max_in_flight=draw(INT32), ack_wait_in_secs=draw(INT32),
            durable_name=draw(st.one_of(st.just(""), st.just(HONEST_DURABLE), ODD_TEXT)),
            start_position=draw(st.one_of(st.integers(0, 4), INT32)),
            start_sequence=draw(UINT64), start_time_delta=draw(INT64)).SerializeToString()

    @st.composite
    def unsubscribe(draw):
        return pb.UnsubscribeRequest(
            client_id=draw(foreign_ids), subject=draw(sub_channels),
            inbox=draw(st.one_of(inboxes, live_ack_inbox)),
            durable_name=draw(st.one_of(st.just(""), ODD_TEXT))).SerializeToString()

    @st.composite
    def close(draw):
        return pb.CloseRequest(client_id=draw(foreign_ids)).SerializeToString()

    @st.composite
    def ping(draw):
        return pb.Ping(conn_id=draw(conn_ids)).SerializeToString()

    @st.composite
    def ack(draw):
        return pb.Ack(subject=draw(sub_channels),
                      sequence=draw(st.one_of(st.integers(0, 20), UINT64))).SerializeToString()

    @st.composite
    def pub(draw):
        """(channel, PubMsg bytes): never the well-behaved client's channel."""
        channel = draw(valid_channels)
        if draw(st.booleans()):  # well-formed from a live client: stored, unless too big
            pm = pb.PubMsg(client_id=ctx.victim.client_id, guid=draw(guids), subject=channel,
                           conn_id=draw(st.sampled_from([b"", ctx.victim.conn_id])))
            room = MAX_PAYLOAD - pm.ByteSize() - 4
            pm.data = _filler(min(draw(SIZES), max(room, 0)), draw(st.integers(0, 2**32)))
            return channel, pm.SerializeToString()
        subject = draw(st.one_of(st.just(channel), sub_channels))
        client_id = draw(st.one_of(st.just(ctx.victim.client_id), client_ids))
        data = b""
        size = draw(st.one_of(st.integers(0, 64), SIZES))
        if size:
            data = _filler(size, draw(st.integers(0, 2**32)))
        pm = pb.PubMsg(client_id=client_id, guid=draw(guids), subject=subject,
                       reply=draw(ODD_TEXT), conn_id=draw(conn_ids),
                       sha256=draw(st.binary(max_size=40)))
        room = MAX_PAYLOAD - pm.ByteSize() - 8
        if room > 0:
            pm.data = data[:room]
        return channel, pm.SerializeToString()

    @st.composite
    def mutated(draw, base):
        raw = draw(base)
        op = draw(st.sampled_from(["valid", "valid", "valid", "flip", "truncate", "unknown", "garbage",
                                   "oversize"]))
        if op == "flip" and raw:
            buf = bytearray(raw)
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, len(buf) - 1))
                buf[i] ^= 1 << draw(st.integers(0, 7))
            raw = bytes(buf)
        elif op == "truncate" and raw:
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif op == "unknown":
            extra = b""
            for _ in range(draw(st.integers(1, 4))):
                wt = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))
                value = (draw(st.binary(max_size=32)) if wt == 2
                         else draw(st.integers(0, 2**32 - 1)))
                extra += _unknown_field(draw(st.integers(1, 2**29 - 1)), wt, value)
            raw = draw(st.sampled_from([raw + extra, extra + raw]))
        elif op == "garbage":
            raw = draw(st.binary(max_size=300))
        elif op == "oversize":
            room = MAX_PAYLOAD - len(raw) - 8
            size = min(draw(SIZES), max(room, 0))
            raw = raw + _unknown_field(999, 2, _filler(size, draw(st.integers(0, 2**32))))
        return raw[:MAX_PAYLOAD]

    @st.composite
    def pub_msg(draw):
        channel, raw = draw(pub())
        raw = draw(mutated(st.just(raw)))
        return f"_STAN.pub.{cid}.{channel}", raw

    ack_subjects = st.one_of(
        live_ack_inbox,
        st.from_regex(r"[A-Za-z0-9]{1,22}", fullmatch=True).map(lambda t: f"_STAN.acks.{cid}.{t}"))

    kinds = {
        "discover": st.tuples(st.just(f"_STAN.discover.{cid}"), mutated(connect())),
        "pub": pub_msg(),
        "sub": st.tuples(st.just(f"_STAN.sub.{cid}"), mutated(subscribe())),
        "unsub": st.tuples(st.just(f"_STAN.unsub.{cid}"), mutated(unsubscribe())),
        "subclose": st.tuples(st.just(f"_STAN.subclose.{cid}"), mutated(unsubscribe())),
        "close": st.tuples(st.just(f"_STAN.close.{cid}"), mutated(close())),
        "ping": st.tuples(st.just(f"_STAN.discover.{cid}.pings"), mutated(ping())),
        "ack": st.tuples(ack_subjects, mutated(ack())),
    }
    hostile = st.sampled_from(sorted(kinds)).flatmap(
        lambda k: st.tuples(st.just(k), kinds[k], st.booleans()))
    return st.lists(hostile, min_size=1, max_size=12)


RESPONSE = {"discover": pb.ConnectResponse, "pub": pb.PubAck, "sub": pb.SubscriptionResponse,
            "unsub": pb.SubscriptionResponse, "subclose": pb.SubscriptionResponse,
            "close": pb.CloseResponse, "ping": pb.PingResponse}


# -- the well-behaved client ------------------------------------------------------------

class Honest:
    """Publishes to its channel and receives through a durable, acking each message."""

    def __init__(self, client: RawStan, sub):
        self.client = client
        self.sub = sub
        self.published: list[bytes] = []
        self.received: list[pb.MsgProto] = []
        self.problems: list[str] = []
        self.stop = asyncio.Event()
        self._want: bytes | None = None
        self._got = asyncio.Event()

    async def publish_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            data = b"honest-%d" % n
            if n % 25 == 24:  # now and then a big one, well within the limit
                data += b"." * (MAX_PAYLOAD - 1024)
            await self.publish(data)
            n += 1
            if n % 10 == 0:
                r = await self.client.ping()
                if r.error:
                    self.problems.append(f"ping refused: {r.error}")
            await asyncio.sleep(0.01)  # a steady trickle, not a flood

    async def publish(self, data: bytes) -> None:
        try:
            ack = await self.client.publish(HONEST_CHANNEL, data)
        except Exception as e:
            self.problems.append(f"publish {data!r} failed: {e!r}")
            return
        if ack.error:
            self.problems.append(f"publish {data!r} refused: {ack.error}")
        else:
            self.published.append(data)

    async def receive_loop(self) -> None:
        while True:
            m = await self.sub.queue.get()
            self.received.append(m)
            await self.sub.ack(m)
            if m.data == self._want:
                self._got.set()

    async def finish(self) -> None:
        """Publish a last message and wait for it: everything before it has arrived."""
        self._want = b"honest-last"
        await self.publish(self._want)
        await asyncio.wait_for(self._got.wait(), 30)

    def check(self) -> None:
        assert not self.problems, self.problems
        first_time = []
        seen = set()
        for m in self.received:
            assert m.subject == HONEST_CHANNEL, m
            if m.data in seen:
                assert m.redelivered, f"duplicate without redelivered flag: {m}"
                continue
            seen.add(m.data)
            first_time.append(m)
        missing = [d[:20] for d in self.published if d not in seen]
        strangers = [(m.sequence, m.data[:40]) for m in first_time if m.data not in
                     set(self.published)]
        assert not missing and not strangers, (missing, strangers)
        assert [m.data for m in first_time] == self.published
        # Sequences: no gaps, no strangers; the stream holds only our messages.
        assert [m.sequence for m in first_time] == list(range(1, len(self.published) + 1))


# -- the test ---------------------------------------------------------------------------

async def test_hostile_input_does_not_hurt_the_server(make_stan_server, caplog):
    caplog.set_level(logging.WARNING)
    # Heartbeats often enough that dead hostile clients are reaped during the run.
    stan = await make_stan_server(hb_interval=1.0, hb_timeout=2.0, hb_fail_count=3,
                                  dup_check_timeout=2.0)
    server = stan.server
    cid = stan.cluster_id
    loop = asyncio.get_running_loop()

    honest = await RawStan.open(stan.nats_url, cid, "honest-" + os.urandom(4).hex())
    assert (await honest.connect()).error == ""
    hsub = await honest.subscribe(HONEST_CHANNEL, "honest.in", durable_name=HONEST_DURABLE,
                                  start_position=pb.First, ack_wait_in_secs=30)
    assert hsub.error == ""
    victim = await RawStan.open(stan.nats_url, cid, "victim")
    assert (await victim.connect()).error == ""
    vsub = await victim.subscribe("fz.victim", "fz.victim.in", start_position=pb.First,
                                  max_in_flight=5, ack_wait_in_secs=1)
    assert vsub.error == ""
    for i in range(5):
        assert (await victim.publish("fz.victim", b"v%d" % i)).error == ""
    ghost = await RawStan.open(stan.nats_url, cid, "ghost", answer_heartbeats=False)
    assert (await ghost.connect()).error == ""

    fz = await nats.connect(stan.nats_url, max_reconnect_attempts=-1)

    async def answer_hb(msg):
        await msg.respond(b"")
    await fz.subscribe("fzhb.>", cb=answer_hb)
    await fz.flush()

    ctx = Ctx(cid, honest, hsub, victim, vsub, ghost.client_id)
    ctx.honest_stream = server.channels.channels[HONEST_CHANNEL].stream
    good = Honest(honest, hsub)
    tasks = [asyncio.create_task(good.receive_loop()), asyncio.create_task(good.publish_loop())]

    sent = {"total": 0, "with_reply": 0}
    missing: list[str] = []
    wrong: list[str] = []

    async def one(kind: str, subject: str, data: bytes, with_reply: bool) -> None:
        sent["total"] += 1
        what = f"{kind} {subject} {len(data)}B {data[:60]!r}"
        if not with_reply or kind == "ack":
            reply = fz.new_inbox() if with_reply else ""
            await fz.publish(subject, data, reply=reply)
            return
        sent["with_reply"] += 1
        try:
            r = await fz.request(subject, data, timeout=REPLY_TIMEOUT)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            missing.append(f"{what}: {e!r}")
            return
        try:
            resp = RESPONSE[kind].FromString(r.data)
        except Exception as e:
            wrong.append(f"{what}: reply {r.data[:60]!r} is no {RESPONSE[kind].__name__}: {e}")
            return
        if kind == "sub" and resp.ack_inbox and not resp.error:
            ctx.live_ack_inboxes.append(resp.ack_inbox)

    async def batch(messages) -> None:
        await asyncio.gather(*(one(kind, subject, data, with_reply)
                               for kind, (subject, data), with_reply in messages))

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages=strategies(ctx))
    def fuzz(messages):
        asyncio.run_coroutine_threadsafe(batch(messages), loop).result()

    try:
        await asyncio.to_thread(fuzz)
        print(f"hostile messages sent: {sent['total']} ({sent['with_reply']} with a reply "
              f"subject); honest messages: {len(good.published)}")
        good.stop.set()
        await tasks[1]
        await good.finish()
    finally:
        for t in tasks:
            t.cancel()

    assert not missing, missing[:10]
    assert not wrong, wrong[:10]
    good.check()

    # The well-behaved client's channel and durable are intact.
    ch = server.channels.channels[HONEST_CHANNEL]
    info = await fz.jsm().stream_info(ch.stream)
    n = len(good.published)
    assert (info.state.first_seq, info.state.last_seq, info.state.messages) == (1, n, n)
    assert server.subs.find(honest.client_id, hsub.ack_inbox) is not None
    assert (await honest.ping()).error == ""

    # The server is alive: background tasks running, NATS connection never lost.
    for task in (server.clients._task, server.channels._sweeper, server.channels._reaper):
        assert not task.done(), task
    assert server.nc.is_connected and server.nc.stats["reconnects"] == 0

    # ...and serves a newcomer end to end.
    fresh = await RawStan.open(stan.nats_url, cid, "fresh")
    assert (await fresh.connect()).error == ""
    fsub = await fresh.subscribe("fresh.ch", "fresh.in", start_position=pb.First)
    assert fsub.error == ""
    assert (await fresh.publish("fresh.ch", b"hello")).error == ""
    m = await fsub.next()
    assert (m.data, m.sequence, m.redelivered) == (b"hello", 1, False)
    assert (await fresh.close()) == ""

    bugs = [r for r in caplog.records
            if r.getMessage().startswith("handler for") or r.exc_info
            or (r.name == "stanfleet.streaming" and r.getMessage().startswith("nats: "))]
    assert not bugs, [(r.getMessage(), r.exc_text) for r in bugs[:5]]

    for c in (honest, victim, ghost):
        await c.nc.close()
    await fz.close()
