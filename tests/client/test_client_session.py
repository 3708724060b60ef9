"""Sessions, durables and queue groups against the real streaming server."""

from __future__ import annotations

import asyncio

import nats
import pytest
from stanfleet.client import (
    Client,
    ErrCloseRejected,
    ErrConnectionClosed,
    ErrConnectionLost,
    ErrDuplicateClientID,
    ErrMaxPings,
    ErrPublishRejected,
    StanError,
)
from stanfleet.streaming import ServerOptions, StreamingServer

from .helpers import DEFAULT_WAIT, Collector, connect, new_client_id, publish_all


async def test_owned_connection_is_closed_and_borrowed_one_is_not(stan_server):
    sc = await connect(stan_server)
    assert sc.is_connected and sc.nc.is_connected
    await sc.close()
    assert sc.is_closed and sc.nc.is_closed

    nc = await nats.connect(stan_server.nats_url)
    sc2 = Client()
    await sc2.connect(stan_server.cluster_id, new_client_id(), nats=nc)
    await sc2.close()
    assert nc.is_connected
    # Our inboxes are gone from the borrowed connection (only its request mux may remain).
    assert all(not s.subject.startswith("_STAN.acks") for s in nc._subs.values())
    with pytest.raises(ErrConnectionClosed):
        await sc2.close()
    await nc.close()


async def test_client_can_connect_again_after_close(stan_server):
    sc = Client()
    client_id = new_client_id()
    for _ in range(2):
        await sc.connect(stan_server.cluster_id, client_id, servers=[stan_server.nats_url])
        assert (await sc.publish("foo", b"x")).error == ""
        await sc.close()


async def test_duplicate_client_id_is_rejected_while_the_first_is_alive(stan_server):
    first = await connect(stan_server, "dup-id")
    second = Client()
    with pytest.raises(ErrDuplicateClientID) as info:
        await second.connect(stan_server.cluster_id, "dup-id", servers=[stan_server.nats_url])
    assert "already registered" in str(info.value)
    assert isinstance(info.value, StanError)
    assert second.nc.is_closed
    # The first session is untouched.
    assert (await first.publish("foo", b"still here")).error == ""
    await first.close()


class DeafClient(Client):
    """Does not answer heartbeats, so a newcomer with its clientID replaces it."""

    async def _process_heartbeats(self, msg) -> None:
        return None


async def test_replaced_client_learns_it_through_pings(stan_server):
    lost = asyncio.get_running_loop().create_future()
    old = await connect(
        stan_server, "replace-me", cls=DeafClient, ping_interval=1, conn_lost_cb=lost.set_result
    )
    new = await connect(stan_server, "replace-me")
    err = await asyncio.wait_for(lost, DEFAULT_WAIT)
    assert isinstance(err, ErrConnectionLost)
    assert str(err) == "client has been replaced or is no longer registered"
    assert old.is_closed
    with pytest.raises(ErrConnectionClosed):
        await old.close()
    assert (await new.publish("foo", b"x")).error == ""
    await new.close()


async def test_conn_lost_cb_fires_once_when_the_server_stops_answering_pings(broker):
    # Our own server instance, stopped once here (the stan_server fixture
    # would stop it a second time at teardown).
    server = StreamingServer(ServerOptions(nats_url=broker.url, cluster_id="stopping"))
    await server.start()
    calls = []
    lost = asyncio.get_running_loop().create_future()

    async def conn_lost_cb(err):
        calls.append(err)
        if not lost.done():
            lost.set_result(err)

    sc = Client()
    await sc.connect(
        "stopping",
        new_client_id(),
        servers=[broker.url],
        ping_interval=1,
        ping_max_out=2,
        conn_lost_cb=conn_lost_cb,
    )
    assert (await sc.publish("foo", b"x")).error == ""
    await server.stop()
    err = await asyncio.wait_for(lost, DEFAULT_WAIT)
    assert isinstance(err, ErrMaxPings)
    assert sc.is_closed and sc.nc.is_closed
    with pytest.raises(ErrConnectionClosed):
        await sc.publish("foo", b"x")
    assert len(calls) == 1


class PingDeafClient(Client):
    """Ignores PingResponses, as if the server had stopped answering."""

    async def _process_ping_response(self, msg) -> None:
        return None


async def test_unanswered_pings_trigger_conn_lost_cb(stan_server):
    lost = asyncio.get_running_loop().create_future()
    sc = await connect(
        stan_server,
        cls=PingDeafClient,
        ping_interval=1,
        ping_max_out=2,
        conn_lost_cb=lost.set_result,
    )
    err = await asyncio.wait_for(lost, DEFAULT_WAIT)
    assert str(err) == "stan: connection lost due to PING failure"
    assert sc.is_closed


async def test_durable_resumes_after_the_last_acked_message(stan_server):
    pub = await connect(stan_server)
    sub_client_id = new_client_id("durable")
    sc = await connect(stan_server, sub_client_id)
    got = Collector()
    await sc.subscribe("orders", cb=got, durable_name="dur", deliver_all_available=True)
    await publish_all(pub, "orders", [b"1", b"2", b"3"])
    await got.wait_count(3)
    await sc.close()  # closing the client keeps the durable

    await publish_all(pub, "orders", [b"4", b"5", b"6"])
    sc = await connect(stan_server, sub_client_id)
    resumed = Collector()
    # The start position is ignored on resume.
    await sc.subscribe("orders", cb=resumed, durable_name="dur", deliver_all_available=True)
    await resumed.wait_count(3)
    assert resumed.seqs == [4, 5, 6]
    await sc.close()
    await pub.close()


async def test_subscription_close_keeps_a_durable_and_unsubscribe_deletes_it(stan_server):
    sc = await connect(stan_server)
    got = Collector()
    sub = await sc.subscribe("orders", cb=got, durable_name="dur", deliver_all_available=True)
    await publish_all(sc, "orders", [b"1", b"2"])
    await got.wait_count(2)
    await sub.close()

    await sc.publish("orders", b"3")
    kept = Collector()
    sub = await sc.subscribe("orders", cb=kept, durable_name="dur", deliver_all_available=True)
    await kept.wait_count(1)
    assert kept.seqs == [3]
    await sub.unsubscribe()

    fresh = Collector()
    await sc.subscribe("orders", cb=fresh, durable_name="dur", deliver_all_available=True)
    await fresh.wait_count(3)
    assert fresh.seqs == [1, 2, 3]  # a new durable: starts where asked
    await sc.close()


async def test_queue_group_delivers_each_message_to_one_member(stan_server):
    members = [await connect(stan_server) for _ in range(3)]
    collectors = [Collector() for _ in members]
    for sc, got in zip(members, collectors):
        await sc.subscribe("tasks", queue="workers", cb=got)
    plain = Collector()
    await members[0].subscribe("tasks", cb=plain)

    n = 60
    await publish_all(members[0], "tasks", [b"t%d" % i for i in range(n)])
    await plain.wait_count(n)

    async def group_total():
        while sum(len(c.msgs) for c in collectors) < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(group_total(), DEFAULT_WAIT)
    seqs = sorted(s for c in collectors for s in c.seqs)
    assert seqs == list(range(1, n + 1))  # each exactly once across the group
    for sc in members:
        await sc.close()


async def test_queue_member_leaving_hands_over_to_the_others(stan_server):
    a = await connect(stan_server)
    b = await connect(stan_server)
    got_a, got_b = Collector(), Collector()
    sub_a = await a.subscribe("tasks", queue="q", cb=got_a)
    await b.subscribe("tasks", queue="q", cb=got_b)
    await sub_a.unsubscribe()
    await publish_all(a, "tasks", [b"x"] * 5)
    await got_b.wait_count(5)
    assert got_a.seqs == [] and got_b.seqs == [1, 2, 3, 4, 5]
    await a.close()
    await b.close()


async def test_durable_queue_group_survives_its_last_member_closing(stan_server):
    sc = await connect(stan_server)
    got = Collector()
    sub = await sc.subscribe(
        "tasks", queue="q", durable_name="dq", cb=got, deliver_all_available=True
    )
    await publish_all(sc, "tasks", [b"1", b"2"])
    await got.wait_count(2)
    await sub.close()
    await sc.publish("tasks", b"3")

    other = await connect(stan_server)  # a different clientID joins the same durable group
    again = Collector()
    await other.subscribe(
        "tasks", queue="q", durable_name="dq", cb=again, deliver_all_available=True
    )
    await again.wait_count(1)
    assert again.seqs == [3]
    await other.close()
    await sc.close()


async def test_publish_refused_by_the_server_raises_or_reaches_the_handler(stan_server):
    # A replaced session (it ignored the server's heartbeat) is refused on
    # publish; pings are slow here so the refusal is what the client sees.
    old = await connect(stan_server, "refused", cls=DeafClient, ping_interval=60)
    new = await connect(stan_server, "refused")
    with pytest.raises(ErrPublishRejected) as info:
        await old.publish("foo", b"x")
    assert info.value.ack.error == str(info.value) != ""
    got = asyncio.get_running_loop().create_future()
    await old.publish("foo", b"y", ack_handler=got.set_result)
    ack = await asyncio.wait_for(got, DEFAULT_WAIT)
    assert ack.error != ""
    await new.close()
    # The server no longer knows the old session's clientID.
    with pytest.raises(ErrCloseRejected):
        await old.close()
    assert old.nc.is_closed


async def test_subscription_operations_after_client_close(stan_server):
    sc = await connect(stan_server)
    got = Collector()
    sub = await sc.subscribe("foo", cb=got, manual_acks=True)
    await sc.publish("foo", b"x")
    await got.wait_count(1)
    await sc.close()
    assert sub.is_closed
    with pytest.raises(ErrConnectionClosed):
        await sub.unsubscribe()
    with pytest.raises(ErrConnectionClosed):
        await sc.ack(got.msgs[0])
    with pytest.raises(ErrConnectionClosed):
        await sc.subscribe("foo", cb=got)


async def test_a_connect_that_times_out_is_asked_again_as_the_same_session(make_stan_server):
    """The server registers slowly (here: the liveness check of a silent old
    session of the clientID, 3 s); the client's connect times out after 1 s
    and asks again with the same conn_id and heartbeat inbox, which joins the
    registration and is answered by it."""
    from tests.streaming.rawstan import RawStan

    stan = await make_stan_server(dup_check_timeout=3.0)
    olds = []

    async def silent_session(client_id):
        old = await RawStan.open(stan.nats_url, stan.cluster_id, client_id,
                                 answer_heartbeats=False)

        async def ignore(msg):
            pass
        await old.nc.subscribe(old.hb_inbox, cb=ignore)
        assert (await old.connect()).error == ""
        olds.append(old)
    await silent_session("once")
    with pytest.raises(StanError, match="connect request timeout"):
        await connect(stan, "once", connect_timeout=1)  # stan.py's single request
    await silent_session("again")
    sc = await connect(stan, "again", connect_timeout=1, connect_attempts=5)
    assert stan.server.clients.clients["again"].conn_id == sc._conn_id
    await sc.publish("after", b"1")
    await sc.close()
    for old in olds:
        await old.nc.close()
