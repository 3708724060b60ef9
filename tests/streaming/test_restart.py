"""SIGKILL the streaming server and restart it: nothing acknowledged is lost,
and connected clients carry on without redoing their STAN connect."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.naming import Subjects

from .acks import durable_acked
from .rawstan import RawStan
from .serverproc import ServerProcess, free_port


async def _exercise_restart(url: str, start, kill):
    c = await RawStan.open(url, "test-cluster", "survivor")
    assert (await c.connect()).error == ""
    dur = await c.subscribe("events", "in.dur", durable_name="keep", ack_wait_in_secs=1,
                            start_position=pb.First)
    plain = await c.subscribe("events", "in.plain", start_position=pb.NewOnly)
    for i in range(1, 4):
        assert (await c.publish("events", b"%d" % i)).error == ""
    got = [await dur.next() for _ in range(3)]
    await dur.ack(got[0])
    for _ in range(3):
        await plain.ack(await plain.next())
    # Client acks are fire-and-forget; wait until JetStream has recorded ours,
    # from then on the crash must not bring message 1 back.
    await durable_acked(c.nc, "test-cluster", "events", "survivor", "keep", 1)

    await kill()
    await start()

    # Same session, no new connect: publishing and both subscriptions go on.
    assert (await c.publish("events", b"4")).error == ""
    assert (await c.ping()).error == ""
    m = await plain.next()
    while m.sequence < 4:  # a delivery that was in flight at the kill may come again
        m = await plain.next()
    assert m.sequence == 4 and m.data == b"4"
    seen = {}
    while set(seen) != {2, 3, 4}:
        m = await dur.next()
        seen[m.sequence] = m
        await dur.ack(m)
    assert seen[2].redelivered and seen[3].redelivered
    assert 1 not in seen  # acked before the crash: never delivered again
    await c.close()


async def test_restart_with_external_nats_keeps_clients_and_durables(broker, tmp_path):
    proc = await ServerProcess.on_broker(broker.url, tmp_path).start()
    try:
        await _exercise_restart(broker.url, proc.start, proc.kill)
    finally:
        await proc.stop()


async def test_restart_with_embedded_nats_keeps_clients_and_durables(tmp_path):
    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "d"),
                         log_path=str(tmp_path / "server.log"))
    await proc.start()
    try:
        await _exercise_restart(f"nats://127.0.0.1:{port}", proc.start, proc.kill)
    finally:
        await proc.stop()


async def test_restart_ends_the_predecessors_slow_nats_shutdown_and_keeps_its_state(tmp_path):
    """The killed server's nats-server gets SIGTERM and stops its consumers
    one by one (~10 ms each: 10 s here, minutes at 20,000); its successor
    gives it a grace to write their state, then kills it and takes the port."""
    import nats
    from nats.js.api import ConsumerConfig, StreamConfig

    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file",
                         "-dir", str(tmp_path / "d"), log_path=str(tmp_path / "server.log"))
    await proc.start()
    try:
        url = f"nats://127.0.0.1:{port}"
        nc = await nats.connect(url)
        js = nc.jsm()
        await js.add_stream(StreamConfig(name="ballast", subjects=["ballast"],
                                         max_consumers=5000))
        slots = asyncio.Semaphore(64)

        async def consumer(i):
            async with slots:
                await js.add_consumer("ballast", ConsumerConfig(durable_name=f"b{i}"))
        await asyncio.gather(*(consumer(i) for i in range(1000)))
        await nc.close()
        nats_log = ""

        async def kill():
            nonlocal nats_log
            with open(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children") as f:
                child = f.read().split()[0]
            nats_log = os.readlink(f"/proc/{child}/fd/1")  # its log (stdout), in a temp dir
            await proc.kill()
        await _exercise_restart(url, proc.start, kill)
        with open(nats_log) as f:
            old = f.read()
        # It was shutting down in order, and did not get to finish.
        assert "Initiating JetStream Shutdown" in old and "Server Exiting" not in old
        assert any("of a killed streaming server still holds the store" in line
                   for line in proc.lines)
    finally:
        await proc.stop()


async def test_sigterm_exits_cleanly_and_stops_the_embedded_nats(tmp_path):
    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "d"),
                         log_path=str(tmp_path / "server.log"))
    await proc.start()
    url = f"nats://127.0.0.1:{port}"
    c = await RawStan.open(url, "test-cluster", "c")
    await c.connect()
    assert (await c.publish("x", b"1")).error == ""
    await c.nc.close()
    assert await proc.terminate() == 0
    assert any("shutting down" in line for line in proc.lines)
    with pytest.raises(ConnectionRefusedError):  # the embedded nats-server is gone too
        await asyncio.open_connection("127.0.0.1", port)


async def test_embedded_nats_requires_the_configured_user(tmp_path):
    import nats

    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "memory",
                         "--user", "stan", "--pass", "s3cret", "-SV",
                         log_path=str(tmp_path / "server.log"))
    await proc.start()
    try:
        with pytest.raises(Exception):
            await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False,
                               max_reconnect_attempts=0)
        c = await RawStan.open(f"nats://stan:s3cret@127.0.0.1:{port}", "test-cluster", "authed")
        assert (await c.connect()).error == ""
        assert (await c.publish("x", b"1")).error == ""
        await c.close()
        assert any("trace <- _STAN.discover.test-cluster" in line for line in proc.lines)
    finally:
        await proc.stop()


async def _burst_stopped_by(tmp_path, sig: int, after_stop) -> None:
    """5,000 async publishes; `sig` reaches the server at the first PubAck.
    Then the server comes back on the same store: every acked message is
    there, once."""
    from stanfleet.client import Client

    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "d"))
    proc = ServerProcess(*args, log_path=str(tmp_path / "server.log"))
    await proc.start()
    try:
        url = f"nats://127.0.0.1:{port}"
        import nats

        async def quiet(e):
            pass
        nc = await nats.connect(url, error_cb=quiet, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.1)
        sc = Client()
        await sc.connect("test-cluster", "burst", nats=nc)
        acked: set[str] = set()
        answered = asyncio.Event()
        first_ack = asyncio.Event()
        total = 5000
        seen = 0

        async def on_ack(ack):
            nonlocal seen
            seen += 1
            if not getattr(ack, "error", "") and not isinstance(ack, Exception):
                acked.add(ack.guid)
            first_ack.set()
            if seen == total:
                answered.set()

        async def stop_mid_burst():
            await first_ack.wait()
            proc.proc.send_signal(sig)
        stopper = asyncio.create_task(stop_mid_burst())
        for i in range(total):
            await sc.publish("burst", b"%d" % i, ack_handler=on_ack, ack_wait=10)
        await stopper
        await after_stop(proc, port)
        await asyncio.wait_for(answered.wait(), 40)  # every publish resolved: ack or timeout
        await proc.start()  # look at what was stored
        js = nc.jsm()
        stream = Subjects("test-cluster").stream_for("burst")
        info = await js.stream_info(stream)
        stored = [(await js.get_msg(stream, seq)).headers["Nats-Msg-Id"]
                  for seq in range(1, info.state.last_seq + 1)]
        # Nothing acknowledged is lost, and nothing is stored twice. A message
        # stored after its publisher gave up waiting (a loaded machine) is
        # allowed: the publisher's retry carries the same guid and is deduplicated.
        assert acked and acked <= set(stored)
        assert len(stored) == len(set(stored))
        await nc.close()
    finally:
        await proc.stop()


async def test_sigterm_with_a_burst_in_flight_answers_and_stores_every_publish(tmp_path):
    async def exits_cleanly(proc, port):
        assert await proc.proc.wait() == 0
    await _burst_stopped_by(tmp_path, signal.SIGTERM, exits_cleanly)


async def test_sigkill_with_a_burst_in_flight_loses_no_acked_publish(tmp_path):
    async def killed(proc, port):
        await proc.proc.wait()
    await _burst_stopped_by(tmp_path, signal.SIGKILL, killed)

