"""Hypothesis throws arbitrary JSON and bytes at a running listener, from two
devices, while a third publishes honest readings: every hostile message is
saved (if it happens to be a valid reading) or rejected and acked, the
honest device's readings all arrive, in order, and the listener never stops.

Hypothesis runs in a worker thread (its API is synchronous); each example's
batch is published on the test's event loop, where the server, the listener
and the devices run (as in tests/streaming/test_fuzz.py)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stanfleet.services.readings_db import ReadingsDB

from ..services.test_device_data import payloads
from ..services.test_listener import device, reading, rows, start_listener, stop_listener
from ..waiting import eventually

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
HOSTILE = ("EV11", "EV12")
big = st.integers(1025, 1_000_000).map(lambda n: b"{" * n)
batches = st.lists(st.tuples(st.sampled_from(HOSTILE), payloads | big), min_size=1,
                   max_size=15)


@pytest.mark.timeout(600)  # up to 40 examples, each waiting for the listener
async def test_hostile_readings_never_hold_up_other_devices(stan_server, tmp_path):
    db = tmp_path / "r.db"
    lst, task = await start_listener(stan_server, db)
    clients = {d: await device(stan_server, d) for d in (*HOSTILE, "600D")}
    honest = clients["600D"][0]
    sent = {"hostile": 0, "honest": 0}
    loop = asyncio.get_running_loop()

    async def handled_all():
        return lst.saved + lst.rejected == sent["hostile"] + sent["honest"]

    async def batch(messages) -> None:
        async def hostile():
            for dev, payload in messages:
                await clients[dev][0].publish(f"devices.{dev}.events", payload)
                sent["hostile"] += 1

        async def honest_two():
            for _ in range(2):
                sent["honest"] += 1
                await honest.publish("devices.600D.events", reading(sent["honest"] % 100))
        await asyncio.gather(hostile(), honest_two())
        await eventually(handled_all, timeout=60)  # the honest ones among them
        assert not task.done()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batches)
    def fuzz(messages):
        asyncio.run_coroutine_threadsafe(batch(messages), loop).result()

    await asyncio.to_thread(fuzz)
    assert not task.done()
    saved, rejects = rows(db, "600D")
    assert rejects == [] and [s for s, _, _ in saved] == list(range(1, sent["honest"] + 1))
    assert [t for _, _, t in saved] == [float(i % 100) for i in range(1, sent["honest"] + 1)]
    r = ReadingsDB(str(db))
    counts = r.reject_counts()
    hostile_saved = sum(r.count(d) for d in HOSTILE)
    r.close()
    assert sum(counts.get(d, 0) for d in HOSTILE) + hostile_saved == sent["hostile"]
    # Still serving: a new device is found and its first reading saved.
    newcomer, newcomer_nc = await device(stan_server, "N3W0")
    await newcomer.publish("devices.N3W0.events", json.dumps(
        {"ts": "2026-11-25T10:00:00Z", "temp": 21.5}).encode())
    sent["honest"] += 1
    await eventually(handled_all, timeout=60)
    assert [t for _, _, t in rows(db, "N3W0")[0]] == [21.5]
    await newcomer.close()
    await newcomer_nc.close()
    await stop_listener(lst, task)
    for sc, nc in clients.values():
        await sc.close()
        await nc.close()
