"""The listener on a real PostgreSQL: every reading stored exactly once on
(device, seq) across a restart and with two instances in the queue group;
retention at work."""

from __future__ import annotations

import asyncio

from stanfleet.services.listener import Listener, ListenerConfig
from stanfleet.services.readings_store import open_store

from ..waiting import eventually
from .test_listener import device, reading


async def start(stan, url: str, name: str, **config) -> tuple[Listener, asyncio.Task]:
    lst = Listener(ListenerConfig(nats_url=stan.nats_url, cluster_id=stan.cluster_id,
                                  name=name, db_path=url, **config))
    task = asyncio.create_task(lst.run())
    await asyncio.wait_for(lst.ready.wait(), 15)
    return lst, task


async def stop(lst: Listener, task: asyncio.Task) -> None:
    await lst.stop()
    await asyncio.wait_for(task, 15)


def seqs(url: str, device_id: str) -> list[int]:
    db = open_store(url)
    try:
        return [s for s, _, _ in db.readings(device_id)]
    finally:
        db.close()


async def stored(url: str, device_id: str, n: int) -> None:
    async def all_there():
        return len(await asyncio.to_thread(seqs, url, device_id)) >= n
    await eventually(all_there, timeout=60)


async def test_a_restart_mid_stream_stores_each_reading_once(stan_server, pg_url):
    lst, task = await start(stan_server, pg_url, "1")
    sc, nc = await device(stan_server, "PG01")
    for i in range(50):
        await sc.publish("devices.PG01.events", reading(i % 40))

    async def some():
        return lst.saved > 0
    await eventually(some)
    await stop(lst, task)  # SIGTERM's path: what was received is committed and acked
    for i in range(50, 100):  # published while no listener runs
        await sc.publish("devices.PG01.events", reading(i % 40))
    lst, task = await start(stan_server, pg_url, "1")
    await stored(pg_url, "PG01", 100)
    assert seqs(pg_url, "PG01") == list(range(1, 101))
    await stop(lst, task)
    await sc.close()
    await nc.close()


async def test_two_instances_share_the_work_into_one_database(stan_server, pg_url):
    a, ta = await start(stan_server, pg_url, "a")
    b, tb = await start(stan_server, pg_url, "b")
    devices = [await device(stan_server, f"Q{i:03d}") for i in range(4)]
    per_device = 30

    async def publish(i, sc):
        for n in range(per_device):
            await sc.publish(f"devices.Q{i:03d}.events", reading(n % 40))
    await asyncio.gather(*(publish(i, sc) for i, (sc, _) in enumerate(devices)))
    for i in range(4):
        await stored(pg_url, f"Q{i:03d}", per_device)
        assert seqs(pg_url, f"Q{i:03d}") == list(range(1, per_device + 1))
    assert a.saved > 0 and b.saved > 0, (a.saved, b.saved)  # the queue group split the work
    assert a.saved + b.saved >= 4 * per_device
    await stop(a, ta)
    await stop(b, tb)
    for sc, nc in devices:
        await sc.close()
        await nc.close()


async def test_retention_drops_old_readings_while_serving(stan_server, pg_url):
    db = open_store(pg_url)
    db.commit_batch([("OLD9", 1, "2020-01-01T00:00:00.000Z", 5.0)], [])
    db.close()
    lst, task = await start(stan_server, pg_url, "1", retention_days=30)
    sc, nc = await device(stan_server, "NEW9")
    await sc.publish("devices.NEW9.events", reading(21, ts="2099-01-01T00:00:00Z"))
    await stored(pg_url, "NEW9", 1)

    async def old_gone():
        return not await asyncio.to_thread(seqs, pg_url, "OLD9")
    await eventually(old_gone)
    assert lst.metrics.retention_deleted._value.get() == 1
    await stop(lst, task)
    await sc.close()
    await nc.close()


async def test_readings_flow_again_when_the_database_comes_back(stan_server,
                                                                make_postgres_server):
    pg = make_postgres_server()
    url = pg.database("fleet")
    lst, task = await start(stan_server, url, "1")
    sc, nc = await device(stan_server, "DB01")
    for i in range(5):
        await sc.publish("devices.DB01.events", reading(i))
    await stored(url, "DB01", 5)
    await asyncio.to_thread(pg.halt)  # the database machine dies
    for i in range(5, 10):
        await sc.publish("devices.DB01.events", reading(i))

    async def noticed():
        return lst.not_ready().startswith("database:")
    await eventually(noticed)
    await asyncio.to_thread(pg.run)
    await stored(url, "DB01", 10)  # well within ack_wait: the listener retried, no redelivery
    assert seqs(url, "DB01") == list(range(1, 11))

    async def ready_again():
        return lst.not_ready() == ""
    await eventually(ready_again)
    await stop(lst, task)
    await sc.close()
    await nc.close()


async def test_a_reading_the_database_refused_is_not_acked_but_redelivered(
        stan_server, make_postgres_server):
    """PostgreSQL restarts (pg_ctl stop -m fast) while readings arrive and the
    listener is stopped before it comes back: what it could not commit was not
    acked, so the next listener of the group gets it from the server."""
    pg = make_postgres_server()
    url = pg.database("fleet")
    lst, task = await start(stan_server, url, "1")
    sc, nc = await device(stan_server, "DB02")
    for i in range(3):
        await sc.publish("devices.DB02.events", reading(i))
    await stored(url, "DB02", 3)
    await asyncio.to_thread(pg.halt, "fast")
    for i in range(3, 6):
        await sc.publish("devices.DB02.events", reading(i))

    async def noticed():
        return lst.not_ready().startswith("database:")
    await eventually(noticed)
    saved = lst.saved
    await stop(lst, task)  # gives up its uncommitted batch: not acked
    assert lst.saved == saved
    await asyncio.to_thread(pg.run)
    lst, task = await start(stan_server, url, "1")
    await stored(url, "DB02", 6)
    assert seqs(url, "DB02") == list(range(1, 7))
    await stop(lst, task)
    await sc.close()
    await nc.close()


async def test_an_idle_listener_reconnects_after_a_database_restart(stan_server,
                                                                   make_postgres_server):
    """The restart happens while nothing is written: the first statements after
    it (a new device from the registry, its readings) find the old connection
    dead and go through a new one at once, not after a redelivery (ack_wait)."""
    pg = make_postgres_server()
    url = pg.database("fleet")
    lst, task = await start(stan_server, url, "1")
    await asyncio.to_thread(pg.halt, "fast")
    await asyncio.to_thread(pg.run)
    sc, nc = await device(stan_server, "DB03")
    for i in range(3):
        await sc.publish("devices.DB03.events", reading(i))

    async def all_saved():
        return lst.saved >= 3
    await eventually(all_saved, timeout=10)  # the registry's ack_wait is 30 s
    assert seqs(url, "DB03") == [1, 2, 3]
    assert lst.metrics.db_errors._value.get() == 0
    await stop(lst, task)
    await sc.close()
    await nc.close()
