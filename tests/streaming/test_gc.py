"""The server freezes what survives a full garbage collection (startup.py):
10,000 devices' state made each full collection hold every client for up to
a second. Frozen objects are never collected as cycles again, so the state a
session leaves behind must be freed by reference counting alone: no cycle
among a closed session's records."""

from __future__ import annotations

import gc

from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.clients import ClientInfo
from stanfleet.streaming.startup import _after_collection
from stanfleet.streaming.subscriptions import Group, Member

from .rawstan import RawStan


def _left(client_id: str) -> dict:
    """The session's records still alive (gc sees frozen ones once unfrozen)."""
    out = {"ClientInfo": 0, "Member": 0, "Group": 0}
    for o in gc.get_objects():
        if isinstance(o, (ClientInfo, Member)) and o.client_id == client_id:
            out[type(o).__name__] += 1
        elif isinstance(o, Group) and o.channel.name.startswith("gc."):
            out["Group"] += 1
    return out


async def test_a_closed_sessions_state_is_freed_without_the_cycle_collector(stan_server):
    c = await RawStan.open(stan_server.nats_url, stan_server.cluster_id, "short-lived")
    assert (await c.connect()).error == ""
    plain = await c.subscribe("gc.plain", "in.p")
    durable = await c.subscribe("gc.durable", "in.d", durable_name="d", start_position=pb.First)
    queue = await c.subscribe("gc.queue", "in.q", q_group="g")
    assert plain.error == durable.error == queue.error == ""
    assert (await c.publish("gc.durable", b"x")).error == ""
    await durable.ack(await durable.next())
    assert _left("short-lived") == {"ClientInfo": 1, "Member": 3, "Group": 3}
    # As the server's hook does after a full collection.
    gc.collect()
    gc.freeze()
    gc.disable()  # nothing but reference counting from here
    try:
        assert await c.close() == ""
        gc.unfreeze()  # so get_objects() sees what the freeze held
        left = _left("short-lived")
    finally:
        gc.unfreeze()
        gc.enable()
    assert left == {"ClientInfo": 0, "Member": 0, "Group": 0}


def test_the_hook_freezes_after_a_full_collection_only():
    gc.unfreeze()
    _after_collection("start", {"generation": 1})
    _after_collection("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
    assert gc.get_freeze_count() == 0
    _after_collection("start", {"generation": 2})
    _after_collection("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
