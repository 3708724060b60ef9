"""Clustered storage: channels replicated over a 3-node JetStream cluster.

Kill the node that leads a channel's stream while clients publish: publishing
carries on once a new leader is elected, and no acknowledged message is lost.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming import ServerOptions, StreamingServer

from ..waiting import eventually
from .rawstan import RawStan
from .serverproc import free_port

PUBLISHERS = 4
PER_PUBLISHER = 150


def three_nodes(tmp_path, cluster_name: str, tls: tuple[str, str] | None = None):
    """Start three routed JetStream nodes, yield them, stop them (a fixture's body)."""
    ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{p}" for p in ports]
    nodes = []
    try:
        for i, port in enumerate(ports):
            nodes.append(Broker(BrokerConfig(
                server_name=f"n{i}", cluster_name=cluster_name, cluster_port=port,
                routes=[r for r in routes if not r.endswith(f":{port}")], tls=tls,
                store_dir=str(tmp_path / f"n{i}"), log_file=str(tmp_path / f"n{i}.log"))).start())
        yield nodes
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture
def cluster(tmp_path):
    yield from three_nodes(tmp_path, "stanfleet-test")


async def jetstream_ready(url: str, **connect) -> None:
    """Wait until the cluster can place a 3-replica stream (all peers known).
    connect: more nats.connect options (e.g. tls)."""
    nc = await nats.connect(url, **connect)

    async def can_place_r3():
        try:
            await nc.jsm().add_stream(name="PROBE", subjects=["probe"], num_replicas=3)
            await nc.jsm().delete_stream("PROBE")
            return True
        except Exception:
            return False
    try:
        await eventually(can_place_r3, timeout=30, interval=0.2)
    finally:
        await nc.close()


async def publish_until_acked(c: RawStan, channel: str, data: bytes, guid: str) -> int:
    """Publish with retries under the same guid, as a STAN client does after a timeout."""
    attempts = 0
    while True:
        attempts += 1
        try:
            ack = await asyncio.wait_for(c.publish(channel, data, guid=guid), 5)
            if not ack.error:
                return attempts
        except (asyncio.TimeoutError, nats.errors.Error):
            pass
        await asyncio.sleep(0.1)  # back off before retrying, as clients do


async def test_killing_the_stream_leader_loses_no_acknowledged_message(cluster):
    urls = ",".join(n.url for n in cluster)
    await jetstream_ready(cluster[0].url)
    server = StreamingServer(ServerOptions(nats_url=urls, replicas=3, pub_ack_timeout=3))
    await server.start()
    try:
        c = await RawStan.open(urls, "test-cluster", "loader")
        assert (await c.connect()).error == ""
        assert (await c.publish("events", b"first", guid="g-first")).error == ""
        stream = server.channels.channels["events"].stream
        info = await c.nc.jsm().stream_info(stream)
        assert info.config.num_replicas == 3
        leader = info.cluster.leader
        acked: list[str] = ["g-first"]
        half = asyncio.Event()

        async def publisher(p: int):
            for i in range(PER_PUBLISHER):
                guid = f"g-{p}-{i}"
                await publish_until_acked(c, "events", guid.encode(), guid)
                acked.append(guid)
                if len(acked) >= PUBLISHERS * PER_PUBLISHER // 2:
                    half.set()

        tasks = [asyncio.create_task(publisher(p)) for p in range(PUBLISHERS)]
        await half.wait()
        victim = next(n for n in cluster if n.config.server_name == leader)
        victim.kill()
        await asyncio.gather(*tasks)

        async def new_leader():
            i = await c.nc.jsm().stream_info(stream)
            return i.cluster.leader not in (None, leader)
        await eventually(new_leader, timeout=30, interval=0.2)
        # Every acknowledged message is in the channel, exactly once. Right after
        # a node loss the JetStream API may answer "temporarily unavailable"
        # for a while: retry as any client would.
        js = c.nc.jsm()
        stored = []

        async def read_all():
            try:
                info = await js.stream_info(stream)
                msgs = [await js.get_msg(stream, seq)
                        for seq in range(info.state.first_seq, info.state.last_seq + 1)]
            except nats.js.errors.Error:
                return False
            stored[:] = [m.data.decode() if m.data != b"first" else "g-first" for m in msgs]
            return True
        await eventually(read_all, timeout=60, interval=0.5)
        assert sorted(stored) == sorted(acked)
        # And delivery works on the new leader.
        sub = None

        async def subscribed():
            nonlocal sub
            sub = await c.subscribe("events", f"in.check.{len(stored)}",
                                    start_position=pb.LastReceived)
            return not sub.error
        await eventually(subscribed, timeout=60, interval=0.5)
        assert (await sub.next(timeout=15)).data.decode() == stored[-1]
        await c.nc.close()
    finally:
        await server.stop()
