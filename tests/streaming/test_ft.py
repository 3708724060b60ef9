"""Fault tolerance (--ft_group): two real server processes share one JetStream.

SIGKILL the active one: the standby takes over within 5 s, a connected client
keeps its session, a durable gets its unacked messages again, and every
acknowledged message is in the channel exactly once. Freeze the active one
(SIGSTOP) instead: once it wakes it serves nothing and exits.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import nats
import pytest
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.ft import Lease, LeaseLost
from stanfleet.streaming.naming import Subjects

from ..waiting import eventually
from .acks import durable_acked
from .rawstan import RawStan
from .serverproc import ServerProcess, free_port
from .test_cluster import cluster, jetstream_ready  # noqa: F401  (cluster is a fixture)

CLUSTER = "test-cluster"
TAKEOVER_TARGET = 5.0  # seconds from SIGKILL of the active to the first PubAck of the next
PUBLISH_TIMEOUT = 0.25  # a publish the dead server swallowed is retried this soon
# With the node that led the lease's stream (and maybe the registrations'
# streams) lost as well, JetStream first elects new leaders: nobody can write
# the lease or load the registrations before that. Measured 7-16 s here on 2
# busy cores, election timeouts included; the bound is JetStream's, not ours.
TAKEOVER_WITH_NODE_LOSS = 30.0
STANDING_BY = "standing by"
READY = "streaming server ready"


@pytest.fixture
def monitored_broker(tmp_path):
    """A nats-server with its monitoring port: /subsz shows who subscribes to what."""
    b = Broker(BrokerConfig(store_dir=str(tmp_path / "js"), log_file=str(tmp_path / "nats.log"),
                            monitor_port=free_port()))
    b.start()
    yield b
    b.stop()


class Group:
    """Streaming-server processes of one FT group, each with its monitoring port."""

    def __init__(self, tmp_path, url: str, *extra: str):
        self.tmp_path = tmp_path
        self.url = url
        self.extra = extra
        self.procs: list[ServerProcess] = []
        self.ports: dict[ServerProcess, int] = {}

    async def start(self, ready_line: str) -> ServerProcess:
        port = free_port()
        n = len(self.procs)
        proc = ServerProcess("-ns", self.url, "--ft_group", "g1", "-m", str(port),
                             "-dir", str(self.tmp_path / f"d{n}"), *self.extra,
                             log_path=str(self.tmp_path / f"server{n}.log"),
                             ready_line=ready_line)
        self.procs.append(proc)
        self.ports[proc] = port
        return await proc.start()

    async def status(self, proc: ServerProcess) -> int:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{self.ports[proc]}/streaming/isFTActive"
            async with s.get(url) as r:
                return r.status

    async def serverz(self, proc: ServerProcess) -> dict:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{self.ports[proc]}/streaming/serverz"
            async with s.get(url) as r:
                return await r.json()

    async def stop(self) -> None:
        for p in self.procs:
            if p.proc and p.proc.returncode is None:
                p.proc.send_signal(signal.SIGKILL)
                await p.proc.wait()


class Publisher:
    """Publishes numbered messages one after another, each retried under its guid
    until acknowledged, as a STAN client does; records when each was acked, and
    when the attempt that got the ack was sent."""

    def __init__(self, c: RawStan, channel: str):
        self.c = c
        self.channel = channel
        self.acked: dict[str, float] = {}
        self.sent: dict[str, float] = {}  # of the attempt that was acked
        self._stop = False
        self._task: asyncio.Task | None = None
        self.progress = asyncio.Event()  # set at every ack

    def start(self) -> "Publisher":
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        i = 0
        while not self._stop:
            guid = f"m-{i}"
            while True:
                sent = time.monotonic()
                try:
                    ack = await asyncio.wait_for(
                        self.c.publish(self.channel, guid.encode(), guid=guid), PUBLISH_TIMEOUT)
                    if not ack.error:
                        break
                except (asyncio.TimeoutError, nats.errors.Error):
                    pass
            self.acked[guid] = time.monotonic()
            self.sent[guid] = sent
            self.progress.set()
            i += 1

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        async def enough():
            while len(self.acked) < count:
                self.progress.clear()
                await self.progress.wait()
        await asyncio.wait_for(enough(), timeout)

    def first_ack_after(self, t: float) -> float:
        """When the first publish sent after t was acked: by a server that came after t."""
        return min(v for g, v in self.acked.items() if self.sent[g] > t)

    async def stop(self) -> None:
        self._stop = True
        await self._task


async def stored_guids(nc, channel: str) -> list[str]:
    """Every message of the channel, read from JetStream."""
    js = nc.jsm()
    stream = Subjects(CLUSTER).stream_for(channel)
    out = []

    async def read():
        try:
            info = await js.stream_info(stream)
            out[:] = [(await js.get_msg(stream, seq)).data.decode()
                      for seq in range(info.state.first_seq, info.state.last_seq + 1)]
            return True
        except nats.js.errors.Error:  # right after a node loss: not yet elected
            return False
    await eventually(read, timeout=60, interval=0.5)
    return out


async def stan_subscribers(broker: Broker, subject: str = f"_STAN.discover.{CLUSTER}") -> int:
    """How many subscriptions on the broker take messages on subject (STAN connects)."""
    async with aiohttp.ClientSession() as s:
        url = (f"http://127.0.0.1:{broker.config.monitor_port}/subsz"
               f"?subs=1&test={subject}")
        async with s.get(url) as r:
            doc = await r.json()
    return doc["total"]


async def _takeover(group: Group, url: str, victim=None):
    """Active A, standby B; SIGKILL A under publish load, and with it the NATS node
    that `await victim()` names."""
    a = await group.start(READY)
    b = await group.start(STANDING_BY)
    assert await group.status(a) == 200 and await group.status(b) == 204
    assert (await group.serverz(b))["state"] == "FT_STANDBY"
    assert (await group.serverz(a))["state"] == "FT_ACTIVE"

    c = await RawStan.open(url, CLUSTER, "survivor")
    assert (await c.connect()).error == ""
    dur = await c.subscribe("events", "in.dur", durable_name="keep", ack_wait_in_secs=2,
                            start_position=pb.First)
    pub = Publisher(c, "events").start()
    await pub.wait_for(20)
    got = [await dur.next() for _ in range(3)]
    await dur.ack(got[0])
    await durable_acked(c.nc, CLUSTER, "events", "survivor", "keep", 1)

    node = await victim() if victim is not None else None
    killed_at = time.monotonic()
    await a.kill()
    if node is not None:
        node.kill()
    await b.wait_line(READY, timeout=30)
    await pub.wait_for(len(pub.acked) + 20, timeout=60)
    takeover = pub.first_ack_after(killed_at) - killed_at
    await pub.stop()
    return a, b, c, dur, pub, takeover


async def _check_after_takeover(group, b, c, dur, pub) -> None:
    assert await group.status(b) == 200
    # The same session: no new connect, pings and publishes are answered.
    assert (await c.ping()).error == ""
    # The durable: its unacked messages come again, then everything else once.
    seen = {}
    while len(seen) < len(pub.acked) - 1:
        m = await dur.next(timeout=30)
        seen.setdefault(m.sequence, m)
        await dur.ack(m)
    assert 1 not in seen  # acked before the kill
    assert seen[2].redelivered and seen[3].redelivered
    stored = await stored_guids(c.nc, "events")
    assert sorted(stored) == sorted(pub.acked)  # every acked message, exactly once
    await c.close()


async def test_standby_takes_over_when_the_active_is_killed(monitored_broker, tmp_path):
    group = Group(tmp_path, monitored_broker.url)
    try:
        a, b, c, dur, pub, takeover = await _takeover(group, monitored_broker.url)
        print(f"takeover: {takeover:.2f}s")
        assert takeover < TAKEOVER_TARGET
        assert await stan_subscribers(monitored_broker) == 1  # only the new active
        await _check_after_takeover(group, b, c, dur, pub)
    finally:
        await group.stop()


async def test_standby_does_not_subscribe_to_stan_subjects(monitored_broker, tmp_path):
    group = Group(tmp_path, monitored_broker.url)
    try:
        await group.start(READY)
        b = await group.start(STANDING_BY)
        for subject in (f"_STAN.discover.{CLUSTER}", f"_STAN.pub.{CLUSTER}.events",
                        f"_STAN.sub.{CLUSTER}", f"_STAN.close.{CLUSTER}"):
            assert await stan_subscribers(monitored_broker, subject) == 1, subject
        assert await group.status(b) == 204
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{group.ports[b]}/streaming/clientsz"
            async with s.get(url) as r:
                assert r.status == 503
    finally:
        await group.stop()


async def test_a_frozen_active_serves_nothing_when_it_wakes(monitored_broker, tmp_path):
    """SIGSTOP stands for a partition: the process neither renews nor serves. While
    frozen, NATS still queues it every publish and delivery; woken after the
    standby took over, it must answer none of them, and exit."""
    group = Group(tmp_path, monitored_broker.url)
    try:
        a = await group.start(READY)
        b = await group.start(STANDING_BY)
        c = await RawStan.open(monitored_broker.url, CLUSTER, "witness")
        assert (await c.connect()).error == ""
        plain = await c.subscribe("events", "in.plain", start_position=pb.First)
        acks: dict[str, int] = {}
        acked = asyncio.Event()

        async def on_ack(msg):
            guid = pb.PubAck.FromString(msg.data).guid
            acks[guid] = acks.get(guid, 0) + 1
            acked.set()
        await c.nc.subscribe("acks.witness", cb=on_ack)

        async def publish(guid: str) -> None:
            pm = pb.PubMsg(client_id="witness", guid=guid, subject="events",
                           data=guid.encode(), conn_id=c.conn_id)
            await c.nc.publish(f"{c.resp.pub_prefix}.events", pm.SerializeToString(),
                               reply="acks.witness")
            while guid not in acks:
                acked.clear()
                await asyncio.wait_for(acked.wait(), 10)

        # First deliveries per sequence. A copy from a would be one too; a
        # redelivery (flagged) is the new active's right, e.g. of a message whose
        # ack a took with it into the freeze.
        deliveries: dict[int, int] = {}

        async def receive() -> None:
            m = await plain.next()
            if not m.redelivered:
                deliveries[m.sequence] = deliveries.get(m.sequence, 0) + 1
            await plain.ack(m)

        await publish("before")
        await receive()  # delivered by a before it freezes, not redelivered after ack_wait
        a.proc.send_signal(signal.SIGSTOP)
        try:
            await b.wait_line(READY, timeout=30)
            assert await group.status(b) == 200
            for i in range(20):  # answered by b, and queued for the frozen a too
                await publish(f"during-{i}")
        finally:
            a.proc.send_signal(signal.SIGCONT)
        rc = await asyncio.wait_for(a.proc.wait(), 30)
        await a._reader
        assert rc == 1
        assert any("lease lost" in line for line in a.lines)
        # Everything a might still have sent has reached NATS before it exited;
        # one more round trip through b makes sure it also reached us.
        await publish("after")
        await c.nc.flush()
        while len(deliveries) < 22:
            await receive()
        await c.nc.flush()
        while not plain.nothing_pending():
            await receive()
        assert set(acks.values()) == {1}, acks  # no second PubAck from a
        assert set(deliveries.values()) == {1}, deliveries  # no second delivery from a
        assert await group.status(b) == 200
    finally:
        await group.stop()


async def test_takeover_while_a_nats_node_dies_too(cluster, tmp_path):  # noqa: F811
    """3-node JetStream, replicas 3: SIGKILL the active server and, at the same
    moment, the node that leads the lease's KV stream."""
    urls = ",".join(n.url for n in cluster)
    await jetstream_ready(cluster[0].url)
    group = Group(tmp_path, urls, "--replicas", "3")

    async def lease_leader() -> Broker:
        nc = await nats.connect(urls.split(","))
        try:
            info = await nc.jsm().stream_info(f"KV_STAN_{CLUSTER}_ft")
        finally:
            await nc.close()
        assert info.config.num_replicas == 3
        return next(n for n in cluster if n.config.server_name == info.cluster.leader)
    try:
        _, b, c, dur, pub, takeover = await _takeover(group, urls, victim=lease_leader)
        print(f"takeover with a node lost: {takeover:.2f}s")
        assert takeover < TAKEOVER_WITH_NODE_LOSS
        await _check_after_takeover(group, b, c, dur, pub)
    finally:
        await group.stop()


@pytest.mark.parametrize("args, error", [
    (["--ft_group", "g1"], "--ft_group needs -ns"),
    (["--ft_group", "g1", "-ns", "nats://127.0.0.1:1", "--ft_lease", "100ms"],
     "--ft_lease must be at least"),
])
def test_ft_flags_are_checked_with_a_one_line_error(args, error, capsys):
    from stanfleet.cli import main

    assert main(["streaming-server", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert error in err and "\n" not in err


async def test_a_stopped_active_hands_over_at_once(monitored_broker, tmp_path):
    """SIGTERM: the active answers what it has, gives the lease up and exits 0;
    the standby does not wait for the lease to lapse."""
    group = Group(tmp_path, monitored_broker.url, "--ft_lease", "30s")
    try:
        a = await group.start(READY)
        b = await group.start(STANDING_BY)
        c = await RawStan.open(monitored_broker.url, CLUSTER, "calm")
        assert (await c.connect()).error == ""
        assert (await c.publish("events", b"1")).error == ""
        assert await a.terminate() == 0
        assert any("lease released" in line for line in a.lines)
        await b.wait_line(READY, timeout=10)  # well before the 30 s lease could lapse
        assert (await c.publish("events", b"2")).error == ""
        await c.close()
    finally:
        await group.stop()


async def test_two_standbys_race_for_a_lapsed_lease_and_one_wins(broker):
    """The lease itself, in-process: a holder that stops renewing lapses, exactly one
    of two standbys takes it over (compare-and-set), and the old holder learns at
    its next renewal that it lost."""
    nc = await nats.connect(broker.url)
    try:
        old, s1, s2 = (Lease(nc, CLUSTER, "race", lease=2.0, storage="memory", replicas=1)
                       for _ in range(3))
        for lease in (old, s1, s2):
            await lease.open()
        await old.acquire()  # the key is free: taken at once
        assert old.valid()
        racers = {asyncio.create_task(s.acquire()): s for s in (s1, s2)}
        done, pending = await asyncio.wait(racers, timeout=15,
                                           return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == 1
        winner = racers[done.pop()]
        assert winner.valid() and not old.valid()
        keeper = asyncio.create_task(winner.keep())
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(old.keep(), 10)
        # While the winner renews, the loser keeps waiting.
        first = winner.revision

        async def renewed_three_times():
            return winner.revision >= first + 3
        await eventually(renewed_three_times)
        loser = pending.pop()
        assert not loser.done()
        loser.cancel()
        keeper.cancel()
    finally:
        await nc.close()
