"""The broker goes down for a while (seed scenario 4, the real thing): our
streaming server with its embedded nats-server is killed and started again on
the same port and data directory, while a simulated device keeps sampling.
No reading is lost within the device's buffer bound."""

from __future__ import annotations

import calendar
import time

import nats
from conftest import Collector
from stanfleet.client import Client
from stanfleet.fleet.runner import FleetRunner

from tests.streaming.serverproc import ServerProcess, free_port

DEV = "0DA6E"


def epoch(ts: str) -> int:
    return calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))


async def test_broker_down_and_back_loses_no_reading(tmp_path, releases):
    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "broker"))
    server = await ServerProcess(*args).start()
    url = f"nats://127.0.0.1:{port}"
    fleet = FleetRunner(url, "test-cluster", tmp_path / "fleet", ids=[DEV],
                        releases_dir=releases,
                        credentials=lambda _id: {"sending_frequency": 1, "buffer_size": 100})
    nc = sc = None
    try:
        await fleet.start()
        await fleet.expect(DEV, "stanfleet: connected")
        await server.kill()  # the broker's host loses power
        await fleet.expect(DEV, "stanfleet: disconnected")
        await fleet.expect(DEV, "offline buffered=5", timeout=30)
        server = await ServerProcess(*args).start()
        back = int(time.time())
        nc = await nats.connect(url)
        sc = Client()
        await sc.connect("test-cluster", "outage-reader", nats=nc)
        events = Collector()
        await sc.subscribe(f"devices.{DEV}.events", cb=events.on_msg, deliver_all_available=True)
        # Delivery is in channel order: once a reading taken after the restart
        # is in, every reading buffered during the outage came before it.
        await events.wait_for(lambda c: c.msgs and epoch(c.json[-1]["ts"]) > back + 1,
                              timeout=60)
    finally:
        await fleet.stop()
        if sc is not None:
            await sc.close()
            await nc.close()
        await server.stop()
    stamps = [epoch(r["ts"]) for r in events.json]
    assert stamps == sorted(stamps)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= 2, f"a reading is missing: gaps {gaps}"
    assert [m.sequence for m in events.msgs] == list(range(1, len(events.msgs) + 1))
