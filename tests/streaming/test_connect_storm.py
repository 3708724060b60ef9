"""Connects under a storm (connects.py): a retry of the same session is not a
replacement, a retry of a connect still being registered is answered with it,
and a connect that waited past its client's timeout is dropped, not answered
late. A real duplicate keeps Go's rule (test_protocol.py)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.connects import ConnectQueue

from ..waiting import eventually
from .rawstan import RawStan


async def _silent_session(stan, client_id: str) -> RawStan:
    """A registered session whose heartbeat inbox exists but never answers:
    the liveness check of a second connect waits out dup_check_timeout."""
    old = await RawStan.open(stan.nats_url, stan.cluster_id, client_id, answer_heartbeats=False)

    async def ignore(msg):
        pass
    await old.nc.subscribe(old.hb_inbox, cb=ignore)
    assert (await old.connect()).error == ""
    return old


async def test_retry_of_a_registered_session_is_answered_without_replacing_it(stan_server):
    c = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, "dev")
    assert (await c.connect()).error == ""
    session = stan_server.server.clients.clients["dev"]
    # Same clientID, conn_id and heartbeat inbox: the client did not see the
    # first answer. Go's rule would ping the inbox, find it alive and refuse.
    again = await c.connect()
    assert again.error == "" and again.pub_prefix and again.ping_interval == 5
    assert stan_server.server.clients.clients["dev"] is session
    assert (await c.publish("x", b"1")).error == ""
    assert (await c.ping()).error == ""


async def _registering(stan):
    """A new session of "dev" whose connect is being registered (it waits on
    Go's liveness check of a silent old one): (old, new, the connect task)."""
    old = await _silent_session(stan, "dev")
    new = await RawStan.open(stan.nats_url, stan.cluster_id, "dev")
    first = asyncio.create_task(new.connect())

    async def registering():
        p = stan.server.connects.pending.get("dev")
        return p is not None and p.conn_id == new.conn_id
    await eventually(registering)
    return old, new, first


async def test_retry_of_a_connect_being_registered_is_answered_with_it(make_stan_server):
    stan = await make_stan_server(dup_check_timeout=3.0)
    old, new, first = await _registering(stan)
    retry = await new.connect()  # answered when the one registration ends
    assert retry.error == "" and (await first).error == ""
    assert stan.server.clients.clients["dev"].conn_id == new.conn_id
    assert (await new.ping()).error == ""
    await old.nc.close()


async def test_another_session_of_a_client_being_registered_is_refused_at_once(make_stan_server):
    stan = await make_stan_server(dup_check_timeout=3.0)
    old, _, first = await _registering(stan)
    other = await RawStan.open(stan.nats_url, stan.cluster_id, "dev")  # another conn_id
    assert "clientID already registered" in (await other.connect()).error
    assert (await first).error == ""
    await old.nc.close()


async def test_a_connect_that_waited_past_the_deadline_is_dropped_unanswered(make_stan_server):
    stan = await make_stan_server(dup_check_timeout=2.0)
    # One slot, held by a liveness check of 2 s: a connect behind it waits
    # longer than the 0.3 s deadline.
    stan.server.connects = ConnectQueue(wait=0.3, slots=1)
    old = await _silent_session(stan, "holder")
    holder = await RawStan.open(stan.nats_url, stan.cluster_id, "holder")
    holding = asyncio.create_task(holder.connect())

    async def slot_taken():
        return "holder" in stan.server.connects.pending
    await eventually(slot_taken)
    late = await RawStan.open(stan.nats_url, stan.cluster_id, "late")
    with pytest.raises(nats.errors.TimeoutError):
        await late.nc.request(f"_STAN.discover.{stan.cluster_id}", pb.ConnectRequest(
            client_id="late", heartbeat_inbox=late.hb_inbox, protocol=1,
            conn_id=late.conn_id).SerializeToString(), timeout=4)
    assert (await holding).error == ""
    assert "late" not in stan.server.clients.clients  # no registration (KV write) for it
    assert stan.server.connects.shed == 1
    assert (await late.connect()).error == ""  # its retry, with the slot free, is answered
    await old.nc.close()


async def test_connect_queue_sheds_by_the_latest_request_of_a_connect():
    q = ConnectQueue(wait=0.5, slots=1)
    p = q.begin("a", b"c1", "hb.a", "r1")
    p.arrived -= 1.0  # as if it had waited a second for a slot
    async with q.slot(p) as in_time:
        assert not in_time
    q.join(p, "r2")  # the client's retry: asked again just now
    async with q.slot(p) as in_time:
        assert in_time
    assert p.replies == ["r1", "r2"] and q.shed == 1
    q.end(p)
    assert "a" not in q.pending
