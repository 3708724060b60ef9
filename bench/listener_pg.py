"""Readings per second the listener sustains into PostgreSQL, with SQLite beside it.

    .venv/bin/python bench/listener_pg.py [--devices 20] [--readings 10000]

A real nats-server and our streaming server (in-process), a PostgreSQL started
in a temporary folder (tests/pg.py: Debian's postgresql package; fsync is off
there, as in the tests, so the figure is the listener's, not the disk's). The
readings are published first; then a listener starts and the clock runs from
its start until every reading is committed: the listener's rate, not the
publishers'. A second line times the store alone (batches of 500 straight
into the database), to show how much of the time is the database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402
from stanfleet.services.listener import BATCH_MAX, Listener, ListenerConfig  # noqa: E402
from stanfleet.services.readings_store import open_store  # noqa: E402
from stanfleet.streaming import ServerOptions, StreamingServer  # noqa: E402

from tests.pg import PostgresServer, why_not  # noqa: E402

# A fleet of 10,000 devices at the default sending_frequency (3 s).
TARGET_LISTENER = 10_000 / 3
TARGET_STORE = 10 * TARGET_LISTENER  # the database must not be what limits the listener
PUBLISH_WINDOW = 256  # publishes in flight per device


async def publish(url: str, cluster: str, devices: int, per_device: int) -> None:
    nc = await nats.connect(url)
    sc = Client()
    await sc.connect(cluster, "bench-publisher", nats=nc)
    body = json.dumps({"ts": "2026-11-25T10:00:00Z", "temp": 21.5}).encode()
    for d in range(devices):
        channel = f"devices.B{d:04d}.events"
        for start in range(0, per_device, PUBLISH_WINDOW):
            n = min(PUBLISH_WINDOW, per_device - start)
            await asyncio.gather(*(sc.publish(channel, body) for _ in range(n)))
    await sc.close()
    await nc.close()


async def listener_rate(url: str, cluster: str, db: str, total: int) -> float:
    lst = Listener(ListenerConfig(nats_url=url, cluster_id=cluster, name="bench", db_path=db))
    started = time.perf_counter()
    task = asyncio.create_task(lst.run())
    while lst.saved < total:  # a benchmark's progress check, not a test's synchronisation
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    await lst.stop()
    await task
    return total / elapsed


def store_rate(db: str, total: int) -> float:
    store = open_store(db)
    rows = [("S0001", i + 1, "2026-11-25T10:00:00.000Z", 21.5) for i in range(total)]
    started = time.perf_counter()
    for i in range(0, total, BATCH_MAX):
        store.commit_batch(rows[i:i + BATCH_MAX], [])
    elapsed = time.perf_counter() - started
    store.close()
    return total / elapsed


async def one_run(label: str, db: str, devices: int, per_device: int, tmp: str) -> None:
    broker = Broker(BrokerConfig(store_dir=f"{tmp}/js-{label}", log_file=f"{tmp}/nats-{label}.log"))
    broker.start()
    server = StreamingServer(ServerOptions(nats_url=broker.url))
    await server.start()
    try:
        total = devices * per_device
        await publish(server.nats_url, server.opts.cluster_id, devices, per_device)
        rate = await listener_rate(server.nats_url, server.opts.cluster_id, db, total)
        print(f"{label:<10} listener: {rate:8,.0f} readings/s   target >= {TARGET_LISTENER:,.0f}  "
              f"({total} readings, {devices} devices)  {'ok' if rate >= TARGET_LISTENER else 'BELOW'}")
    finally:
        await server.stop()
        broker.stop()
    rate = await asyncio.to_thread(store_rate, db, total)
    print(f"{label:<10} store:    {rate:8,.0f} rows/s       target >= {TARGET_STORE:,.0f}  "
          f"(batches of {BATCH_MAX})  {'ok' if rate >= TARGET_STORE else 'BELOW'}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--readings", type=int, default=10_000, help="in all, spread over the devices")
    a = p.parse_args()
    per_device = max(1, a.readings // a.devices)
    with tempfile.TemporaryDirectory() as tmp:
        await one_run("sqlite", f"{tmp}/fleet.db", a.devices, per_device, tmp)
        reason = why_not()
        if reason:
            print(f"postgresql skipped: {reason}")
            return
        pg = PostgresServer().start()
        try:
            await one_run("postgresql", pg.database("bench"), a.devices, per_device, tmp)
        finally:
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
