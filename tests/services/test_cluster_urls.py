"""A service given a NATS cluster (a URL list, from a flag or the site file)
really uses it: a command skips a dead node, and a running listener whose
node dies carries on through another one and saves what was published
meanwhile."""

from __future__ import annotations

import asyncio
import json

from stanfleet.services.connection import open_session
from stanfleet.services.listener import Listener, ListenerConfig
from stanfleet.services.readings_db import ReadingsDB
from stanfleet.services.settings import split_urls
from stanfleet.streaming import ServerOptions, StreamingServer

from ..streaming.rawstan import RawStan
from ..streaming.serverproc import free_port
from ..streaming.test_cluster import cluster, jetstream_ready, publish_until_acked  # noqa: F401
from ..waiting import eventually


async def test_a_command_skips_a_dead_node(stan_server):
    dead = f"nats://127.0.0.1:{free_port()}"
    urls = split_urls(f"{dead}, {stan_server.nats_url}")
    # dont_randomize: the dead node is tried first, every time
    sc, nc = await open_session(urls, stan_server.cluster_id, "cmd", once=True,
                                dont_randomize=True)
    assert nc.connected_url.port == int(stan_server.nats_url.rsplit(":", 1)[1])
    await sc.close()
    await nc.close()


async def test_a_listener_fails_over_when_its_node_dies(cluster, tmp_path):  # noqa: F811
    urls = [n.url for n in cluster]
    await jetstream_ready(urls[0])
    server = StreamingServer(ServerOptions(nats_url=",".join(urls), replicas=3,
                                           pub_ack_timeout=3))
    await server.start()
    db = str(tmp_path / "fleet.db")
    lst = Listener(ListenerConfig(nats_url=urls, cluster_id=server.opts.cluster_id,
                                  db_path=db))
    task = asyncio.create_task(lst.run())
    dev = None
    try:
        await asyncio.wait_for(lst.ready.wait(), 30)
        port = lst._nc.connected_url.port
        victim = next(n for n in cluster if n.url.endswith(f":{port}"))
        others = [n.url for n in cluster if n is not victim]
        dev = await RawStan.open(",".join(others), server.opts.cluster_id, "device-FO01")
        assert (await dev.connect()).error == ""

        def reading(i: int) -> bytes:
            return json.dumps({"ts": "2026-11-25T10:00:00Z", "temp": 20 + i}).encode()
        await publish_until_acked(dev, "devices.FO01.events", reading(0), "g0")

        async def saved(n: int):
            async def check():
                return lst.saved >= n
            await eventually(check, timeout=60, interval=0.1)
        await saved(1)
        victim.kill()
        for i in range(1, 6):
            await publish_until_acked(dev, "devices.FO01.events", reading(i), f"g{i}")
        await saved(6)
        assert lst._nc.connected_url.port != port  # it did move
        store = ReadingsDB(db)
        assert [s for s, _, _ in store.readings("FO01")] == [1, 2, 3, 4, 5, 6]
        store.close()
    finally:
        if dev is not None:
            await dev.nc.close()
        await lst.stop()
        await asyncio.wait_for(task, 30)
        await server.stop()
