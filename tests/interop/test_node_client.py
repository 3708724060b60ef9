"""Wire compatibility with the official Node STAN client (node-nats-streaming).

Each test starts our streaming server on a real nats-server and runs one or
more `node peer.js` processes (see nodepeer.py) against it, unchanged client
code talking to our server as it would to nats-streaming-server.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import ServerOptions, StreamingServer

from ..conftest import RunningStan
from ..streaming.rawstan import RawStan
from .nodepeer import NodePeer, node_missing_reason, take_messages

_missing = node_missing_reason()
if _missing:
    pytest.skip(f"Node interop tests need the official Node client: {_missing}",
                allow_module_level=True)


@pytest.fixture
async def node(stan_server):
    """Factory: start a connected Node peer on `stan_server` (or a given server)."""
    peers: list[NodePeer] = []

    async def start(client_id: str, *commands: dict, stan=None, connected=True,
                    **kw) -> NodePeer:
        peer = await NodePeer.start(stan or stan_server, client_id, *commands, **kw)
        peers.append(peer)
        if connected:
            await peer.expect("connected")
        return peer

    yield start
    for peer in peers:
        await peer.stop()


@pytest.fixture
async def raw(stan_server):
    """Factory: a raw-protobuf Python STAN client (the non-Node side)."""
    clients: list[RawStan] = []

    async def start(client_id: str) -> RawStan:
        c = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, client_id)
        clients.append(c)
        assert (await c.connect()).error == ""
        return c

    yield start
    for c in clients:
        if not c.nc.is_closed:
            await c.nc.close()


async def publish_all(peer: NodePeer, channel: str, *datas: str) -> None:
    for d in datas:
        ack = await peer.publish(channel, d)
        assert ack["error"] == "", ack


def seqs(msgs: list[dict]) -> list[int]:
    return [m["seq"] for m in msgs]


# -- connect and publish -----------------------------------------------------------


async def test_connect_and_publish_gets_a_puback_per_message(node, stan_server):
    n = await node("node-pub")
    guids = set()
    for i in range(3):
        ack = await n.publish("interop.pub", f"m{i}")
        assert ack["error"] == "" and ack["guid"]
        guids.add(ack["guid"])
    assert len(guids) == 3
    ch = stan_server.server.channels.channels["interop.pub"]
    info = await stan_server.server.nc.jsm().stream_info(ch.stream)
    assert (info.state.first_seq, info.state.last_seq) == (1, 3)
    assert (await n.close())["error"] == ""
    assert "node-pub" not in stan_server.server.clients.clients


async def test_script_given_on_the_command_line_runs_after_connect(node):
    n = await node("node-script", {"op": "publish", "channel": "interop.cli", "data": "a",
                                   "id": "p1"},
                   {"op": "subscribe", "sub": "s", "channel": "interop.cli", "start": "all"})
    assert (await n.expect("puback", id="p1"))["error"] == ""
    await n.expect("ready", sub="s")
    [m] = await n.messages("s", 1)
    assert (m["seq"], m["data"], m["channel"]) == (1, "a", "interop.cli")


# -- start positions -----------------------------------------------------------------


async def test_deliver_all_available_replays_from_the_first_message(node):
    n = await node("node-all")
    await publish_all(n, "interop.start", "a", "b", "c")
    assert (await n.subscribe("s", "interop.start", start="all"))["event"] == "ready"
    msgs = await n.messages("s", 3)
    assert [(m["seq"], m["data"], m["redelivered"]) for m in msgs] == [
        (1, "a", False), (2, "b", False), (3, "c", False)]
    await publish_all(n, "interop.start", "d")
    [m] = await n.messages("s", 1)
    assert (m["seq"], m["data"]) == (4, "d")


async def test_start_at_sequence(node):
    n = await node("node-seq")
    await publish_all(n, "interop.seq", "a", "b", "c", "d")
    assert (await n.subscribe("s", "interop.seq", start="seq", seq=3))["event"] == "ready"
    msgs = await n.messages("s", 2)
    assert [(m["seq"], m["data"]) for m in msgs] == [(3, "c"), (4, "d")]


async def test_start_at_time_delta_covering_the_channel_replays_it(node):
    n = await node("node-delta")
    await publish_all(n, "interop.delta", "a", "b")
    r = await n.subscribe("s", "interop.delta", start="delta", delta_ms=60_000)
    assert r["event"] == "ready", r
    assert seqs(await n.messages("s", 2)) == [1, 2]
    await publish_all(n, "interop.delta", "c")
    assert seqs(await n.messages("s", 1)) == [3]


async def test_start_with_last_received(node):
    n = await node("node-last")
    await publish_all(n, "interop.last", "a", "b", "c")
    assert (await n.subscribe("s", "interop.last", start="last"))["event"] == "ready"
    [m] = await n.messages("s", 1)
    assert (m["seq"], m["data"]) == (3, "c")
    await publish_all(n, "interop.last", "d")
    assert seqs(await n.messages("s", 1)) == [4]


async def test_new_only_gets_only_what_is_published_after_subscribing(node):
    n = await node("node-new")
    await publish_all(n, "interop.new", "old")
    assert (await n.subscribe("s", "interop.new"))["event"] == "ready"
    await publish_all(n, "interop.new", "fresh")
    [m] = await n.messages("s", 1)
    assert (m["seq"], m["data"]) == (2, "fresh")


async def test_max_in_flight_with_auto_acks_delivers_everything_in_order(node):
    n = await node("node-inflight")
    assert (await n.subscribe("s", "interop.inflight", max_in_flight=2))["event"] == "ready"
    datas = [f"m{i}" for i in range(30)]
    await publish_all(n, "interop.inflight", *datas)
    msgs = await n.messages("s", len(datas))
    assert [(m["seq"], m["data"]) for m in msgs] == list(enumerate(datas, start=1))
    assert not any(m["redelivered"] for m in msgs)


async def test_pipelined_publishes_to_a_new_channel_keep_their_order(node):
    n = await node("node-batch")
    count = 300
    await n.send("publish_batch", channel="interop.batch", count=count, prefix="m")
    done = await n.expect("batch_done", timeout=30)
    assert done["errors"] == 0
    acks = n.take("puback", channel="interop.batch")
    assert len({a["guid"] for a in acks}) == count and not any(a["error"] for a in acks)
    assert (await n.subscribe("s", "interop.batch", start="all"))["event"] == "ready"
    msgs = await n.messages("s", count)
    assert [(m["seq"], m["data"]) for m in msgs] == [(i + 1, f"m{i}") for i in range(count)]


async def test_wildcard_subscription_is_refused(node):
    n = await node("node-wild")
    r = await n.subscribe("s", "interop.*")
    assert r["event"] == "sub_error" and "invalid" in r["error"]


async def test_empty_and_large_payloads(node, raw):
    n = await node("node-sizes")
    py = await raw("py-sizes")
    big = "x" * (512 * 1024)
    await publish_all(n, "interop.sizes", "", big)
    assert (await py.publish("interop.sizes", b"")).error == ""
    assert (await n.subscribe("s", "interop.sizes", start="all"))["event"] == "ready"
    msgs = await n.messages("s", 3)
    assert [(m["seq"], len(m["data"])) for m in msgs] == [(1, 0), (2, len(big)), (3, 0)]
    assert msgs[1]["data"] == big


# -- durable subscriptions, manual acks and redelivery -------------------------------------


async def test_durable_manual_ack_redelivers_unacked_and_resumes_after_close(node):
    n = await node("node-dur")
    opts = dict(durable="dur", manual=True, ack_wait_ms=1000, start="all")
    assert (await n.subscribe("d1", "interop.dur", **opts))["event"] == "ready"
    await publish_all(n, "interop.dur", "a")
    [first] = await n.messages("d1", 1)
    assert (first["seq"], first["redelivered"]) == (1, False)
    # Not acked: the server must send it again after ack_wait, flagged as redelivered.
    [again] = await n.messages("d1", 1)
    assert (again["seq"], again["data"], again["redelivered"]) == (1, "a", True)
    assert again["redelivery_count"] >= 1
    await n.ack("d1", 1)

    # Close (not unsubscribe) keeps the durable; what is published meanwhile
    # is delivered on resume, and the acked message is not.
    assert (await n.close_sub("d1"))["event"] == "sub_closed"
    await publish_all(n, "interop.dur", "b", "c")
    assert (await n.subscribe("d2", "interop.dur", **opts))["event"] == "ready"
    msgs = await n.messages("d2", 2)
    assert [(m["seq"], m["data"]) for m in msgs] == [(2, "b"), (3, "c")]
    for m in msgs:
        await n.ack("d2", m["seq"])


async def test_durable_resumes_in_a_new_connection_with_unacked_first(node):
    opts = dict(durable="dur", manual=True, ack_wait_ms=30_000, start="all")
    n1 = await node("node-dur2")
    assert (await n1.subscribe("d", "interop.dur2", **opts))["event"] == "ready"
    await publish_all(n1, "interop.dur2", "a", "b")
    msgs = await n1.messages("d", 2)
    await n1.ack("d", msgs[0]["seq"])  # 'b' stays unacked
    await n1.close()

    n2 = await node("node-dur2")  # same clientID: same durable
    await publish_all(n2, "interop.dur2", "c")
    assert (await n2.subscribe("d", "interop.dur2", **opts))["event"] == "ready"
    msgs = await n2.messages("d", 2)
    assert [(m["seq"], m["data"]) for m in msgs] == [(2, "b"), (3, "c")]
    assert msgs[0]["redelivered"] is True


async def test_unsubscribe_deletes_a_durable_but_close_keeps_it(node):
    n = await node("node-unsub")
    await publish_all(n, "interop.unsub", "a", "b")
    opts = dict(durable="dur", start="all")

    # close: the durable remembers that 1 and 2 were acked (auto-ack mode).
    assert (await n.subscribe("s1", "interop.unsub", **opts))["event"] == "ready"
    assert seqs(await n.messages("s1", 2)) == [1, 2]
    assert (await n.close_sub("s1"))["event"] == "sub_closed"
    await publish_all(n, "interop.unsub", "c")
    assert (await n.subscribe("s2", "interop.unsub", **opts))["event"] == "ready"
    assert seqs(await n.messages("s2", 1)) == [3]

    # unsubscribe: the durable is gone, so the next one starts from its start position.
    assert (await n.unsubscribe("s2"))["event"] == "unsubscribed"
    assert (await n.subscribe("s3", "interop.unsub", **opts))["event"] == "ready"
    msgs = await n.messages("s3", 3)
    assert [(m["seq"], m["redelivered"]) for m in msgs] == [(1, False), (2, False), (3, False)]


async def test_second_live_durable_of_the_same_name_is_refused(node):
    n = await node("node-dupdur")
    assert (await n.subscribe("s1", "interop.dupdur", durable="dur"))["event"] == "ready"
    r = await n.subscribe("s2", "interop.dupdur", durable="dur")
    assert r["event"] == "sub_error" and "duplicate durable" in r["error"]


# -- queue groups -------------------------------------------------------------------------


async def test_queue_group_members_share_the_messages(node):
    a = await node("node-qa")
    b = await node("node-qb")
    for peer in (a, b):
        assert (await peer.subscribe("q", "interop.queue", queue="workers"))["event"] == "ready"
    datas = [f"m{i}" for i in range(10)]
    await publish_all(a, "interop.queue", *datas)
    got_a, got_b = await take_messages([a, b], "q", len(datas))
    assert sorted(m["data"] for m in got_a + got_b) == sorted(datas)  # each exactly once
    assert got_a and got_b, "both members must get a share"
    assert not any(m["redelivered"] for m in got_a + got_b)


async def test_queue_member_leaving_hands_its_unacked_messages_to_the_other(node):
    opts = dict(queue="workers", manual=True, ack_wait_ms=60_000)
    a = await node("node-qa2")
    b = await node("node-qb2")
    assert (await a.subscribe("q", "interop.queue2", **opts))["event"] == "ready"
    await publish_all(a, "interop.queue2", "x", "y")
    assert [m["data"] for m in await a.messages("q", 2)] == ["x", "y"]  # a holds both unacked
    assert (await b.subscribe("q", "interop.queue2", **opts))["event"] == "ready"
    assert (await a.close_sub("q"))["event"] == "sub_closed"
    # Long before ack_wait: the leaver's messages go to the remaining member.
    msgs = await b.messages("q", 2)
    assert sorted((m["seq"], m["data"], m["redelivered"]) for m in msgs) == [
        (1, "x", True), (2, "y", True)]


async def test_durable_queue_group_survives_its_last_member_closing(node):
    opts = dict(queue="workers", durable="dq", start="all")
    a = await node("node-dqa")
    assert (await a.subscribe("q", "interop.dqueue", **opts))["event"] == "ready"
    await publish_all(a, "interop.dqueue", "a", "b")
    assert seqs(await a.messages("q", 2)) == [1, 2]
    assert (await a.close())["error"] == ""  # last member leaves by closing: group kept
    b = await node("node-dqb")  # another clientID joins the same durable queue group
    await publish_all(b, "interop.dqueue", "c")
    assert (await b.subscribe("q", "interop.dqueue", **opts))["event"] == "ready"
    [m] = await b.messages("q", 1)
    assert (m["seq"], m["data"]) == (3, "c")
    # Unsubscribing the last member removes the group: a new one starts afresh.
    assert (await b.unsubscribe("q"))["event"] == "unsubscribed"
    assert (await b.subscribe("q2", "interop.dqueue", **opts))["event"] == "ready"
    assert seqs(await b.messages("q2", 3)) == [1, 2, 3]


async def test_subscription_errors_reach_the_node_client(node):
    n = await node("node-suberr")
    await publish_all(n, "interop.suberr", "a")
    r = await n.subscribe("s", "interop.*")
    assert r["event"] == "sub_error" and r["error"] == "stan: invalid subject"


# -- Node <-> Python --------------------------------------------------------------------


async def test_node_publishes_python_receives(node, raw):
    n = await node("node-to-py")
    py = await raw("py-from-node")
    await publish_all(n, "interop.n2p", "from node", "ünïcødé")
    sub = await py.subscribe("interop.n2p", "py.inbox.n2p", start_position=pb.First)
    assert sub.error == ""
    m1, m2 = await sub.next(), await sub.next()
    assert (m1.sequence, m1.data, m1.subject) == (1, b"from node", "interop.n2p")
    assert (m2.sequence, m2.data) == (2, "ünïcødé".encode())
    await sub.ack(m1)
    await sub.ack(m2)


async def test_python_publishes_node_receives(node, raw):
    n = await node("node-from-py")
    py = await raw("py-to-node")
    assert (await n.subscribe("s", "interop.p2n", start="all"))["event"] == "ready"
    payload = bytes(range(256))
    assert (await py.publish("interop.p2n", payload)).error == ""
    assert (await py.publish("interop.p2n", b"text")).error == ""
    m1, m2 = await n.messages("s", 2)
    assert (m1["seq"], base64.b64decode(m1["b64"])) == (1, payload)
    assert (m2["seq"], m2["data"]) == (2, "text")
    assert m1["timestamp_ms"] > 0


async def test_node_acks_reach_the_server_for_python_published_messages(node, raw):
    """A durable Node sub that acked everything resumes past it: its Acks were understood."""
    py = await raw("py-acks")
    n = await node("node-acks")
    opts = dict(durable="d", start="all")
    assert (await n.subscribe("s", "interop.acks", **opts))["event"] == "ready"
    for d in (b"1", b"2"):
        assert (await py.publish("interop.acks", d)).error == ""
    assert seqs(await n.messages("s", 2)) == [1, 2]
    assert (await n.close_sub("s"))["event"] == "sub_closed"
    assert (await py.publish("interop.acks", b"3")).error == ""
    assert (await n.subscribe("s2", "interop.acks", **opts))["event"] == "ready"
    [m] = await n.messages("s2", 1)
    assert (m["seq"], m["data"], m["redelivered"]) == (3, "3", False)


# -- client identity and liveness ------------------------------------------------------


async def test_duplicate_client_id_is_refused_while_the_first_is_alive(node, stan_server):
    first = await node("node-dup")
    second = await node("node-dup", connected=False)
    err = await second.expect("error")
    assert "clientID already registered" in err["error"]
    await second.expect("closed")
    # The first session is untouched.
    assert (await first.publish("interop.dup", "still here"))["error"] == ""
    assert (await first.close())["error"] == ""
    # Once it has left, the clientID is free again.
    third = await node("node-dup")
    assert (await third.publish("interop.dup", "again"))["error"] == ""


async def test_duplicate_client_id_replaces_a_vanished_first(node, stan_server):
    first = await node("node-dup2")
    await first.send("crash")  # gone without a CloseRequest: heartbeats go unanswered
    assert await first.proc.wait() == 0
    second = await node("node-dup2")
    assert (await second.publish("interop.dup2", "new session"))["error"] == ""


async def test_node_client_answers_server_heartbeats(node, make_stan_server):
    stan = await make_stan_server(cluster_id="hb-cluster", hb_interval=0.1, hb_timeout=2,
                                  hb_fail_count=1)
    registry = stan.server.clients
    answers: asyncio.Queue = asyncio.Queue()
    real_is_alive = registry.is_alive

    async def recording_is_alive(info, timeout):
        alive = await real_is_alive(info, timeout)
        if info.client_id == "node-hb":
            answers.put_nowait(alive)
        return alive

    registry.is_alive = recording_is_alive
    n = await node("node-hb", stan=stan)
    assert [await asyncio.wait_for(answers.get(), 10) for _ in range(3)] == [True] * 3
    assert "node-hb" in registry.clients
    assert (await n.publish("interop.hb", "alive"))["error"] == ""


async def test_crashed_client_is_replaced_and_its_durable_resumes(node):
    opts = dict(durable="dur", manual=True, ack_wait_ms=60_000, start="all")
    first = await node("node-crash")
    assert (await first.subscribe("d", "interop.crash", **opts))["event"] == "ready"
    await publish_all(first, "interop.crash", "a", "b")
    msgs = await first.messages("d", 2)
    await first.ack("d", msgs[0]["seq"])
    await first.send("crash")  # 'b' unacked, no CloseRequest, no unsubscribe
    assert await first.proc.wait() == 0
    second = await node("node-crash")  # replaces the silent session
    assert (await second.subscribe("d", "interop.crash", **opts))["event"] == "ready"
    [m] = await second.messages("d", 1)  # long before ack_wait
    assert (m["seq"], m["data"], m["redelivered"]) == (2, "b", True)


async def test_queue_member_declared_dead_hands_over_its_messages(node, make_stan_server):
    stan = await make_stan_server(cluster_id="dead-cluster", hb_interval=0.2, hb_timeout=0.5,
                                  hb_fail_count=2)
    opts = dict(queue="workers", manual=True, ack_wait_ms=60_000)
    a = await node("node-dead-a", stan=stan)
    b = await node("node-dead-b", stan=stan)
    assert (await a.subscribe("q", "interop.dead", **opts))["event"] == "ready"
    await publish_all(a, "interop.dead", "x")
    [held] = await a.messages("q", 1)
    assert (await b.subscribe("q", "interop.dead", **opts))["event"] == "ready"
    await a.send("crash")
    assert await a.proc.wait() == 0
    # The server finds out through missed heartbeats, well before ack_wait.
    [m] = await b.messages("q", 1, timeout=30)
    assert (m["seq"], m["data"], m["redelivered"]) == (held["seq"], "x", True)


async def test_node_session_survives_a_server_restart(node, broker):
    """A restarted server knows the Node client and its subscriptions: the
    client carries on without a new STAN connect."""
    opts = ServerOptions(nats_url=broker.url, cluster_id="restart-cluster")
    server = StreamingServer(opts)
    await server.start()
    try:
        stan = RunningStan(server)
        n = await node("node-restart", stan=stan)
        assert (await n.subscribe("s", "interop.restart", start="all"))["event"] == "ready"
        assert (await n.subscribe("d", "interop.restart", durable="dur",
                                  start="all"))["event"] == "ready"
        await publish_all(n, "interop.restart", "a", "b")
        for sub in ("s", "d"):
            assert seqs(await n.messages(sub, 2)) == [1, 2]
    finally:
        await server.stop()
    server = StreamingServer(opts)
    await server.start()
    try:
        assert "node-restart" in server.clients.clients
        assert (await n.publish("interop.restart", "c"))["error"] == ""
        for sub in ("s", "d"):
            m = await n.expect("msg", sub=sub)
            while m["seq"] < 3:  # an ack still in flight at the stop may bring one back
                m = await n.expect("msg", sub=sub)
            assert (m["seq"], m["data"]) == (3, "c")
        assert (await n.close())["error"] == ""
    finally:
        await server.stop()


async def test_connection_lost_fires_when_the_server_stops(node, broker):
    # Our own server rather than make_stan_server's: this test stops it itself,
    # and StreamingServer.stop() is not safe to call twice.
    server = StreamingServer(ServerOptions(nats_url=broker.url, cluster_id="lost-cluster"))
    await server.start()
    try:
        n = await node("node-lost", stan=RunningStan(server), ping_interval_ms=1000,
                       ping_max_out=2)
        assert (await n.publish("interop.lost", "before"))["error"] == ""
    finally:
        await server.stop()
    # Pings now go unanswered: after ping_max_out of them the client gives up.
    lost = await n.expect("connection_lost", timeout=30)
    assert "PING" in lost["error"]
    await n.expect("closed")


async def test_connection_lost_fires_when_the_session_is_replaced(node, raw, stan_server):
    """A ping answered with an error (the server no longer knows this session)
    ends the Node connection, as with the original server."""
    n = await node("node-gone", ping_interval_ms=1000, ping_max_out=3)
    # Another peer closes the session in the Node client's name.
    py = await raw("py-closer")
    r = await py.nc.request(py.resp.close_requests,
                            pb.CloseRequest(client_id="node-gone").SerializeToString(), timeout=5)
    assert pb.CloseResponse.FromString(r.data).error == ""
    lost = await n.expect("connection_lost", timeout=30)
    assert "replaced" in lost["error"] or "no longer registered" in lost["error"]
