"""Clients served from the moment nats-server's port opens (early.py): a
connect the early layer answers, the requests that follow it held and handed
to the server in order, and what it must leave to the server (a clientID
registered already) decided as the server decides it."""

from __future__ import annotations

import asyncio
import json
import os
import re

import nats
from nats.js import api
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import errors as E
from stanfleet.streaming.relay import Relay

from .rawstan import RawStan
from .serverproc import ServerProcess, free_port

CLUSTER = "test-cluster"
PORT_UP = "embedded nats-server listening"  # logged once the early layer is subscribed
BURST = 300


async def test_a_client_answered_early_publishes_a_burst_and_gets_it_in_order(tmp_path):
    port = free_port()
    # -m: aiohttp too to import before ready, so the client comes before the
    # server is ready even on a loaded machine, which is what is tested here.
    server = await ServerProcess("-a", "127.0.0.1", "-p", str(port), "-m", "0").launch()
    try:
        await server.wait_line(PORT_UP)
        url = f"nats://127.0.0.1:{port}"
        a = await RawStan.open(url, CLUSTER, "eager")
        assert (await a.connect()).error == ""
        answered_before_ready = not any("streaming server ready" in x for x in server.lines)

        # A burst of PubMsgs, pipelined, while the server is still starting.
        acks: asyncio.Queue = asyncio.Queue()

        async def on_ack(msg):
            await acks.put(pb.PubAck.FromString(msg.data))
        await a.nc.subscribe("acks.eager", cb=on_ack)
        guids = [f"g{i}" for i in range(BURST)]
        for i, guid in enumerate(guids):
            pm = pb.PubMsg(client_id="eager", conn_id=a.conn_id, guid=guid, subject="burst",
                           data=str(i).encode())
            await a.nc.publish(f"{a.resp.pub_prefix}.burst", pm.SerializeToString(),
                               reply="acks.eager")
        await a.nc.flush()

        # The same clientID again, while the first session is alive: the early
        # layer holds it, the server's duplicate check refuses it, as Go's does.
        b = await RawStan.open(url, CLUSTER, "eager")
        assert (await b.connect()).error == E.ERR_INVALID_CLIENT

        got = [await asyncio.wait_for(acks.get(), 10) for _ in range(BURST)]
        assert sorted(x.guid for x in got) == sorted(guids)
        assert all(x.error == "" for x in got)

        sub = await a.subscribe("burst", "in.burst", start_position=pb.StartPosition.First)
        assert sub.error == ""
        assert (await a.publish("burst", b"end")).error == ""
        seen = []
        while not seen or seen[-1] != b"end":
            m = await sub.next()
            seen.append(m.data)
            assert m.sequence == len(seen)
        assert seen == [str(i).encode() for i in range(BURST)] + [b"end"]
        assert sub.nothing_pending()

        line = await server.wait_line("requests that came before we were ready")
        answered, held = map(int, re.search(r"answered (\d+) .* over (\d+)", line).groups())
        assert answered_before_ready and answered == 1, server.lines
        assert held > 0, line  # the burst, at least part of it, went through the handover
        assert await a.close() == ""
        await b.vanish()
    finally:
        await server.stop()


async def test_a_registered_client_id_after_a_kill_replaces_the_dead_session(tmp_path):
    """File store: the clientID is registered; the old session (gone) is
    pinged and replaced, by the early layer with the server's help at the
    handover or by the server, whichever the connect met; same outcome."""
    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "data"))
    url = f"nats://127.0.0.1:{port}"
    server = await ServerProcess(*args).start()
    old = await RawStan.open(url, CLUSTER, "keeper")
    assert (await old.connect()).error == ""
    assert (await old.publish("kept", b"1")).error == ""
    await old.vanish()
    await server.kill()

    server = await ServerProcess(*args).launch()
    try:
        await server.wait_line(PORT_UP)
        new = await RawStan.open(url, CLUSTER, "keeper")
        assert (await new.connect()).error == ""
        await server.wait_line("client=keeper replaced (old session did not answer)")
        sub = await new.subscribe("kept", "in.kept", start_position=pb.StartPosition.First)
        assert (await sub.next()).data == b"1"
        assert await new.close() == ""
    finally:
        await server.stop()
    assert os.path.isdir(tmp_path / "data")


async def test_the_early_layer_answers_what_came_before_protobuf_and_holds_the_rest():
    """Subscribed first (no "no responders" while protobuf loads), answering
    from answer_from_now on; a second connect of a clientID, or one it cannot
    decode, is held for the server, in order, with the publishes."""
    from stanfleet.broker import Broker, BrokerConfig
    from stanfleet.streaming import handshake
    from stanfleet.streaming.early import EarlyLayer

    with Broker(BrokerConfig()) as b:
        early = EarlyLayer("127.0.0.1", b.port, CLUSTER, answer=True).start()
        nc = await nats.connect(b.url)
        try:
            req = pb.ConnectRequest(client_id="first", heartbeat_inbox="hb.first", protocol=1,
                                    conn_id=b"c1", ping_interval=7)
            first = asyncio.ensure_future(nc.request(f"_STAN.discover.{CLUSTER}",
                                                     req.SerializeToString(), timeout=10))
            await nc.flush()  # at nats-server, so at the early layer's subscription
            early.answer_from_now(handshake)
            resp = pb.ConnectResponse.FromString((await first).data)
            assert resp.error == "" and resp.pub_prefix == f"_STAN.pub.{CLUSTER}"
            assert (resp.ping_interval, resp.ping_max_out) == (7, 3)

            again = pb.ConnectRequest(client_id="first", heartbeat_inbox="hb.x", protocol=1,
                                      conn_id=b"c2")
            sent = [(f"_STAN.discover.{CLUSTER}", again.SerializeToString()),
                    (f"_STAN.discover.{CLUSTER}", b"\xff garbage"),
                    (f"_STAN.sub.{CLUSTER}", b"sub 1"),
                    (f"_STAN.close.{CLUSTER}", b"close 1")]
            for i, (subject, data) in enumerate(sent):
                await nc.publish(subject, data, reply=f"r.{i}")
            await nc.publish(f"_STAN.pub.{CLUSTER}.ch", b"pub 1", reply="r.pub")
            await nc.flush()

            # Adopted as the server adopts them; what was held comes out in order.
            pubs, requests, answered, replaced = early.handover()
            assert [r.client_id for r in answered] == ["first"]
            relays = Relay([b.url]), Relay([b.url])
            await relays[0].adopt(pubs)
            await relays[1].adopt(requests)
            got: list = []
            all_in = asyncio.Event()

            def take(subject, reply, headers, payload):
                got.append((subject, payload))
                if len(got) == len(sent) + 1:
                    all_in.set()
            relays[0].subscribe(f"_STAN.pub.{CLUSTER}.>", take)
            for subject in {subject for subject, _ in sent}:
                relays[1].subscribe(subject, take)
            relays[0].release()
            relays[1].release()
            await asyncio.wait_for(all_in.wait(), 10)
            pub = (f"_STAN.pub.{CLUSTER}.ch", b"pub 1")
            assert pub in got and [g for g in got if g != pub] == sent
            for r in relays:
                await r.close()
        finally:
            await nc.close()


async def test_file_store_the_bucket_decides_and_an_answer_comes_after_the_write():
    """File store: the clients bucket says whether a clientID is registered;
    a new one is written (the server's record) and answered only then; a
    purged one counts as new; a registered one gets Go's liveness check of
    its old session: alive, "already registered"; dead (no responders), the
    new session written over it and the old one named at handover; one the
    early layer cannot check (an identity's session) is held for the server."""
    from stanfleet.broker import Broker, BrokerConfig
    from stanfleet.streaming import handshake
    from stanfleet.streaming.early import EarlyLayer
    from stanfleet.streaming.state import StateStore

    with Broker(BrokerConfig()) as b:
        nc = await nats.connect(b.url)
        try:
            state = StateStore(nc, CLUSTER, storage="file", replicas=1)
            await state.open()
            records = {cid: handshake.client_record(cid, cid.encode(), f"hb.{cid}.prev", 1, 5, 3,
                                                     1.0, owner) for cid, owner in
                       (("alive", None), ("dead", None), ("owned", "alice"), ("gone", None))}
            for cid, record in records.items():
                await state.save_client(cid, record)
            await state.delete_client("gone")
            async def alive(msg) -> None:
                await msg.respond(b"")
            answering = await nc.subscribe("hb.alive.prev", cb=alive)
            await nc.flush()
            early = EarlyLayer("127.0.0.1", b.port, CLUSTER, answer=True, lookup=True).start()
            early.answer_from_now(handshake)

            async def connect(client_id: str, conn_id: bytes):
                req = pb.ConnectRequest(client_id=client_id, heartbeat_inbox=f"hb.{client_id}",
                                        protocol=1, conn_id=conn_id)
                reply = await nc.request(f"_STAN.discover.{CLUSTER}", req.SerializeToString(),
                                         timeout=10)
                return pb.ConnectResponse.FromString(reply.data)

            resp = await connect("newcomer", b"n1")
            assert resp.error == "" and resp.ping_requests == f"_STAN.discover.{CLUSTER}.pings"
            # Written before the answer came: the record is there, the server's format.
            record = json.loads((await state.clients.get("newcomer")).value)
            assert record["conn_id"] == b"n1".hex() and record["hb_inbox"] == "hb.newcomer"
            assert (record["ping_interval"], record["ping_max_out"], record["owner"]) == (5, 3, None)
            assert (await connect("gone", b"g1")).error == ""
            assert (await connect("alive", b"a1")).error == E.ERR_INVALID_CLIENT
            assert json.loads((await state.clients.get("alive")).value) == records["alive"]
            assert (await connect("dead", b"d1")).error == ""
            assert json.loads((await state.clients.get("dead")).value)["hb_inbox"] == "hb.dead"
            await answering.unsubscribe()

            await nc.publish(f"_STAN.discover.{CLUSTER}", pb.ConnectRequest(
                client_id="owned", heartbeat_inbox="hb.owned", protocol=1,
                conn_id=b"o1").SerializeToString(), reply="r.owned")
            await nc.flush()
            pubs, requests, answered, replaced = early.handover()
            assert [r.client_id for r in answered] == ["newcomer", "gone", "dead"]
            assert replaced == {"dead": records["dead"]}
            relay = Relay([b.url])
            await relay.adopt(requests)
            held = asyncio.get_running_loop().create_future()
            relay.subscribe(f"_STAN.discover.{CLUSTER}",
                            lambda subject, reply, headers, payload: held.set_result(reply))
            relay.release()
            assert await asyncio.wait_for(held, 10) == "r.owned"  # the server's to decide
            await relay.close()
            pubs.sock.close()
        finally:
            await nc.close()


async def test_file_store_a_first_start_creates_the_buckets_as_the_server_does():
    """No state buckets yet (a new directory): the early layer creates them,
    from the config state.py creates them from, answers the connect, and the
    server's StateStore opens them and finds the registration. The config is
    a KV bucket's as nats-py makes one, so kv.get/put/purge keep working."""
    from stanfleet.broker import Broker, BrokerConfig
    from stanfleet.streaming import handshake
    from stanfleet.streaming.early import EarlyLayer
    from stanfleet.streaming.naming import state_buckets
    from stanfleet.streaming.state import StateStore

    with Broker(BrokerConfig()) as b:
        nc = await nats.connect(b.url)
        try:
            early = EarlyLayer("127.0.0.1", b.port, CLUSTER, answer=True, lookup=True).start()
            early.answer_from_now(handshake)
            req = pb.ConnectRequest(client_id="first", heartbeat_inbox="hb.first", protocol=1,
                                    conn_id=b"f1")
            reply = await nc.request(f"_STAN.discover.{CLUSTER}", req.SerializeToString(),
                                     timeout=10)
            assert pb.ConnectResponse.FromString(reply.data).error == ""
            pubs, requests, answered, replaced = early.handover()
            assert [r.client_id for r in answered] == ["first"] and replaced == {}
            for h in (pubs, requests):
                h.sock.close()

            state = StateStore(nc, CLUSTER, storage="file", replicas=1)
            await state.open()
            assert [r["client_id"] for r in await state.load_clients()] == ["first"]
            js, jsm = nc.jetstream(), nc.jsm()
            await js.create_key_value(bucket="REF", description="STAN clients", history=1,
                                      storage=api.StorageType.FILE, replicas=1)
            ref = (await jsm.stream_info("KV_REF")).config.as_dict()
            for bucket in state_buckets(CLUSTER):
                cfg = (await jsm.stream_info(f"KV_{bucket}")).config.as_dict()
                for c in (cfg, ref):
                    for key in ("name", "subjects", "description"):
                        c.pop(key, None)
                assert cfg == ref
        finally:
            await nc.close()


async def test_file_store_a_dead_session_replaced_early_ends_as_the_server_ends_one(tmp_path):
    """A clientID registered by an earlier run whose client died: the early
    layer answers its new connect (Go's liveness check: no responders), and
    the server, taking over, ends the old session as its replace path does:
    its plain subscription is gone, not handed to the new session; its
    durable stays, offline, and resumes for the new session at once with
    what the old one had not acked (as Go)."""
    from stanfleet.broker import Broker, BrokerConfig
    from stanfleet.streaming import handshake
    from stanfleet.streaming.early import EarlyLayer
    from stanfleet.streaming.options import ServerOptions
    from stanfleet.streaming.server import StreamingServer

    with Broker(BrokerConfig(store_dir=str(tmp_path / "js"))) as b:
        opts = ServerOptions(nats_url=b.url, cluster_id=CLUSTER, store="file")
        server = StreamingServer(opts)
        await server.start()
        old = await RawStan.open(b.url, CLUSTER, "keeper")
        try:
            assert (await old.connect()).error == ""
            await old.subscribe("ch", "in.plain")
            dur = await old.subscribe("ch", "in.dur", durable_name="d",
                                      start_position=pb.StartPosition.First)
            assert (await old.publish("ch", b"1")).error == ""
            assert (await dur.next()).data == b"1"  # not acked
            assert len(await server.state.load_subs()) == 2
        finally:
            await old.vanish()
            await server.stop()

        early = EarlyLayer("127.0.0.1", b.port, CLUSTER, answer=True, lookup=True).start()
        early.answer_from_now(handshake)
        new = await RawStan.open(b.url, CLUSTER, "keeper")
        server = None
        try:
            assert (await new.connect()).error == ""  # no server yet: the early layer's answer
            server = StreamingServer(opts, early=early)
            await server.start()
            assert server.subs.by_client.get("keeper", set()) == set()
            assert await server.state.load_subs() == []
            stream = server.subjects.stream_for("ch")
            consumers = [c.config.durable_name for c in await server.channels.jsm.consumers_info(
                stream)]
            assert len(consumers) == 1 and consumers[0]  # the durable's, offline
            resumed = await new.subscribe("ch", "in.dur2", durable_name="d",
                                          start_position=pb.StartPosition.First)
            assert resumed.error == ""
            m = await resumed.next(timeout=10)  # at once, not after ack_wait (30 s)
            assert (m.data, m.redelivered) == (b"1", True)
            await resumed.ack(m)
            assert (await new.publish("ch", b"2")).error == ""
            # The replace path (the server's own too, measured) may deliver
            # the unacked "1" a second time (both NAKs: the restore's and the
            # close's): a redelivery, never a loss, nor a reordering of "2".
            while (m := await resumed.next()).data != b"2":
                assert (m.data, m.redelivered) == (b"1", True)
            assert await new.close() == ""
        finally:
            if server is not None:
                await server.stop()
            else:
                early.close()


async def test_file_store_a_registered_client_still_alive_is_refused_as_go_does(tmp_path):
    """Restart on the same directory; the old client is alive (it reconnected
    to the new nats-server and answers its heartbeat inbox): a connect with
    its clientID gets Go's "clientID already registered", whoever answers."""
    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "data"))
    url = f"nats://127.0.0.1:{port}"
    server = await ServerProcess(*args).start()
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()
    old = await RawStan.open(url, CLUSTER, "keeper", reconnected_cb=on_reconnect)
    try:
        assert (await old.connect()).error == ""
        await server.kill()
        server = await ServerProcess(*args).launch()
        await server.wait_line(PORT_UP)
        await asyncio.wait_for(reconnected.wait(), 10)
        await old.nc.flush()  # its heartbeat inbox subscribed again
        new = await RawStan.open(url, CLUSTER, "keeper")
        assert (await new.connect()).error == E.ERR_INVALID_CLIENT
        await new.vanish()
        assert (await old.publish("ch", b"still mine")).error == ""
        assert await old.close() == ""
    finally:
        await server.stop()


async def test_file_store_a_session_registered_at_start_up_survives_a_kill(tmp_path):
    """File store, a restart on the same directory: a client that connects the
    moment the port is up (answered by the early layer or by the server,
    whichever came first), killed server, next server: the same session goes
    on. A fresh directory (no bucket yet) too."""
    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "d"))
    url = f"nats://127.0.0.1:{port}"
    server = await ServerProcess(*args).launch()
    try:
        await server.wait_line(PORT_UP)
        first = await RawStan.open(url, CLUSTER, "first")
        assert (await first.connect()).error == ""  # no bucket yet: created, then written
        # Before the kill: nats-py's close of a connection it is losing can
        # end in CancelledError.
        await first.vanish()
    finally:
        await server.kill()

    server = await ServerProcess(*args).launch()
    try:
        await server.wait_line(PORT_UP)
        c = await RawStan.open(url, CLUSTER, "newcomer")
        assert (await c.connect()).error == ""
        assert (await c.publish("kept", b"1")).error == ""
    finally:
        await server.kill()

    server = await ServerProcess(*args).start()
    try:
        await server.wait_line("restored 2 clients")
        # Same session, no new connect: the server knows it from the bucket.
        assert (await c.publish("kept", b"2")).error == ""
        assert await c.close() == ""
    finally:
        await server.stop()
