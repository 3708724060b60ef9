"""Clients served from the moment nats-server's port opens (early.py): a
connect the early layer answers, the requests that follow it held and handed
to the server in order, and what it must leave to the server (a clientID
registered already) decided as the server decides it."""

from __future__ import annotations

import asyncio
import os
import re

from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import errors as E

from .rawstan import RawStan
from .serverproc import ServerProcess, free_port

CLUSTER = "test-cluster"
PORT_UP = "embedded nats-server listening"  # logged once the early layer is subscribed
BURST = 300


async def test_a_client_answered_early_publishes_a_burst_and_gets_it_in_order(tmp_path):
    port = free_port()
    server = await ServerProcess("-a", "127.0.0.1", "-p", str(port)).launch()
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


async def test_a_registered_client_id_after_a_kill_is_left_to_the_server(tmp_path):
    """File store: the clientID may be registered, so the connect is held, and
    the server pings the old session (gone) and replaces it."""
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
        assert not any("answered 1 connect" in x for x in server.lines)
        sub = await new.subscribe("kept", "in.kept", start_position=pb.StartPosition.First)
        assert (await sub.next()).data == b"1"
        assert await new.close() == ""
    finally:
        await server.stop()
    assert os.path.isdir(tmp_path / "data")
