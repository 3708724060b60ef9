"""What one device's garbage costs another's readings, at the listener.

    .venv/bin/python bench/hostile_readings.py [--seconds 5] [--flooders 4]

Runs a real nats-server and `stanfleet streaming-server` as processes and the
listener in this one (SQLite in a temporary directory). An honest device
publishes a reading every 20 ms; its latency is from the publish call to the
commit of its row (the listener's database writes are timed in place). Then
the same again while a hostile device floods its own events channel, from
--flooders concurrent publishers, with payloads that stopped the listener
before issue 12 (dates that overflow in UTC, 401-digit temperatures), deep
nesting, bad JSON and 100 kB blobs. Prints p50/p99/max latency beside the
target, readings lost, and how much the database grew.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time

import nats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402
from stanfleet.services.listener import Listener, ListenerConfig  # noqa: E402

from tests.streaming.serverproc import ServerProcess  # noqa: E402

TARGET_P99_MS = 250.0  # a reading reaches the database well within one sending interval
INTERVAL = 0.02  # seconds between two honest readings
HOSTILE = [
    b'{"ts": "0001-01-01T00:00:00+01:00", "temp": 20.5}',
    b'{"ts": "9999-12-31T23:00:00-05:00", "temp": 20.5}',
    b'{"ts": "2026-11-25T10:00:00Z", "temp": ' + b"9" * 401 + b"}",
    b"[" * 900 + b"]" * 900,
    b"not json at all",
    b"\xff" * 100_000,
]


async def client(url: str, client_id: str) -> tuple[Client, object]:
    nc = await nats.connect(url)
    sc = Client()
    await sc.connect("test-cluster", client_id, nats=nc)
    return sc, nc


async def phase(url: str, db: str, name: str, seconds: float, flooders: int) -> dict:
    lst = Listener(ListenerConfig(nats_url=url, name=name, db_path=db))
    committed: dict[int, float] = {}
    honest_device = f"H{name}"
    commit = lst.db.commit_batch

    def timed_commit(readings, rejects):  # runs on the listener's DB thread
        commit(readings, rejects)
        now = time.perf_counter()
        for device, seq, _, _ in readings:
            if device == honest_device:
                committed[seq] = now
    lst.db.commit_batch = timed_commit
    task = asyncio.create_task(lst.run())
    await asyncio.wait_for(lst.ready.wait(), 30)
    honest, hnc = await client(url, f"device-{honest_device}")
    evil, enc = await client(url, f"device-E{name}")
    published: dict[int, float] = {}
    flooded = 0
    stop = asyncio.Event()

    async def flood():
        nonlocal flooded
        for payload in itertools.cycle(HOSTILE):
            if stop.is_set():
                return
            await evil.publish(f"devices.E{name}.events", payload)
            flooded += 1

    floods = [asyncio.create_task(flood()) for _ in range(flooders)]
    t_end = time.perf_counter() + seconds
    seq = 0
    while time.perf_counter() < t_end:
        seq += 1
        published[seq] = time.perf_counter()
        await honest.publish(f"devices.{honest_device}.events", json.dumps(
            {"ts": "2026-11-25T10:00:00Z", "temp": 20 + seq % 10}).encode())
        await asyncio.sleep(INTERVAL)
    stop.set()
    await asyncio.gather(*floods)
    deadline = time.perf_counter() + 30
    while (len(committed) < seq or lst.saved + lst.rejected < seq + flooded) \
            and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # draining; the figures are taken above
    await lst.stop()
    await task
    for c in (honest, evil, hnc, enc):
        await c.close()
    lat = sorted((committed[s] - published[s]) * 1000 for s in published if s in committed)
    return {"sent": seq, "lost": seq - len(lat), "flooded": flooded, "rejected": lst.rejected,
            "p50": statistics.median(lat), "p99": lat[max(0, int(len(lat) * 0.99) - 1)],
            "max": lat[-1]}


def size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="stanfleet-bench-") as tmp:
        broker = Broker(BrokerConfig(store_dir=os.path.join(tmp, "js"))).start()
        server = ServerProcess("-ns", broker.url, "-dir", tmp)
        await server.start()
        db = os.path.join(tmp, "fleet.db")
        try:
            quiet = await phase(broker.url, db, "1", args.seconds, 0)
            before = size(db)
            loud = await phase(broker.url, db, "2", args.seconds, args.flooders)
            grew = size(db) - before
        finally:
            await server.stop()
            broker.stop()
    for label, r in (("alone", quiet), (f"with a flood from {args.flooders} publishers", loud)):
        print(f"honest reading -> database, {label}: p50 {r['p50']:.1f} ms, "
              f"p99 {r['p99']:.1f} ms (target < {TARGET_P99_MS:.0f} ms), max {r['max']:.1f} ms; "
              f"{r['sent']} sent, {r['lost']} lost (target 0)")
    print(f"hostile payloads: {loud['flooded']} published, {loud['rejected']} rejected and acked; "
          f"database grew {grew / 1024:.0f} KiB "
          f"(stored whole before: {loud['flooded'] * statistics.mean(map(len, HOSTILE)) / 2**20:.0f} MiB)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--flooders", type=int, default=4)
    a = p.parse_args()
    print(f"cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.1f}")
    asyncio.run(main(a))
