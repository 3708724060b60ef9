"""Streaming server figures: publish and delivery throughput, and recovery time.

    .venv/bin/python bench/stan_throughput.py [--msgs 20000] [--size 128]

Runs a real nats-server and `stanfleet streaming-server` as separate processes
(so the server has its own core, as in production), drives them with the
stanfleet STAN client and prints one line per figure. Recovery: with 100
channels and 100 durable subscriptions live, SIGKILL the streaming server,
start it again, and time until a client that stayed connected gets its first
successful PubAck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import nats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402

from tests.streaming.serverproc import ServerProcess, free_port  # noqa: E402

try:
    import uvloop
except ImportError:  # the figures are still meaningful, only lower
    uvloop = None


async def stan_client(url: str, client_id: str, **kw) -> tuple[Client, object]:
    async def quiet(e):  # reconnect noise during the recovery run
        pass
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                            error_cb=quiet)
    sc = Client()
    await sc.connect("test-cluster", client_id, nats=nc, **kw)
    return sc, nc


async def async_publish(url: str, n: int, payload: bytes) -> float:
    sc, nc = await stan_client(url, "bench-pub", max_pub_acks_inflight=16384)
    done = asyncio.Event()
    acked = 0
    errors = 0

    async def on_ack(ack):
        nonlocal acked, errors
        acked += 1
        if getattr(ack, "error", ""):
            errors += 1
        if acked == n:
            done.set()

    t0 = time.perf_counter()
    for _ in range(n):
        await sc.publish("bench.async", payload, ack_handler=on_ack)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await sc.close()
    await nc.close()
    if errors:
        raise SystemExit(f"{errors} publishes were refused")
    return n / elapsed


async def sync_publish(url: str, n: int, payload: bytes) -> float:
    sc, nc = await stan_client(url, "bench-sync")
    t0 = time.perf_counter()
    for _ in range(n):
        await sc.publish("bench.sync", payload)
    elapsed = time.perf_counter() - t0
    await sc.close()
    await nc.close()
    return n / elapsed


async def delivery(url: str, n: int) -> float:
    """Replay the async channel from the start, auto-acking every message."""
    sc, nc = await stan_client(url, "bench-sub")
    done = asyncio.Event()
    got = 0

    async def cb(msg):
        nonlocal got
        got += 1
        if got == n:
            done.set()

    t0 = time.perf_counter()
    await sc.subscribe("bench.async", cb=cb, deliver_all_available=True, max_inflight=8192)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await sc.close()
    await nc.close()
    return n / elapsed


async def recovery(channels: int, tmp: str) -> tuple[float, float]:
    """SIGKILL to first successful publish; returns (seconds, restore seconds as logged)."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-dir", os.path.join(tmp, "rec"),
                         "-mc", str(channels + 10))
    await proc.start()
    try:
        sc, nc = await stan_client(url, "bench-rec")

        async def noop(msg):
            pass

        for i in range(channels):
            await sc.publish(f"rec.{i}", b"x")
            await sc.subscribe(f"rec.{i}", cb=noop, durable_name=f"d{i}")
        t0 = time.perf_counter()
        await proc.kill()
        await proc.start()
        while True:
            try:
                await sc.publish("rec.0", b"after", ack_wait=2)
                break
            except Exception:
                await asyncio.sleep(0.05)  # retry until the restarted server answers
        elapsed = time.perf_counter() - t0
        await sc.close()
        await nc.close()
        return elapsed
    finally:
        await proc.stop()


async def main(args) -> None:
    payload = os.urandom(args.size)
    with tempfile.TemporaryDirectory(prefix="stanfleet-bench-") as tmp:
        broker = Broker(BrokerConfig(store_dir=os.path.join(tmp, "js"))).start()
        server = ServerProcess("-ns", broker.url, "-dir", tmp)
        await server.start()
        try:
            rate = await async_publish(broker.url, args.msgs, payload)
            print(f"async publish (ack_handler, {args.size} B, file store): {rate:,.0f} msgs/s")
            rate = await delivery(broker.url, args.msgs)
            print(f"delivery to one subscriber, auto-ack: {rate:,.0f} msgs/s")
            rate = await sync_publish(broker.url, args.sync_msgs, payload)
            print(f"sync publish (await each PubAck): {rate:,.0f} msgs/s")
        finally:
            await server.stop()
            broker.stop()
        secs = await recovery(args.channels, tmp)
        print(f"recovery: SIGKILL -> first PubAck with {args.channels} channels and "
              f"{args.channels} durables: {secs:.2f} s (target < 5 s)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--msgs", type=int, default=20000)
    p.add_argument("--sync-msgs", type=int, default=2000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, default=100)
    a = p.parse_args()
    if uvloop is not None:
        uvloop.install()
    print(f"event loop: {'uvloop' if uvloop else 'asyncio'}; cores: {os.cpu_count()}")
    asyncio.run(main(a))
