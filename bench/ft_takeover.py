"""FT takeover time: SIGKILL of the active server to the first PubAck from the next.

    .venv/bin/python bench/ft_takeover.py [--runs 3] [--channels 20]

Runs a real nats-server and two `stanfleet streaming-server --ft_group`
processes on it. A client that stays connected publishes one message after
another (each retried under its guid every 0.1 s until acked, as a STAN client
does); the active server is SIGKILLed, and the figure is the time from the kill
to the first PubAck for a publish sent after it. Each run then starts a fresh
standby and kills the server that took over. Prints the median beside the
target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402

from tests.streaming.rawstan import RawStan  # noqa: E402
from tests.streaming.serverproc import ServerProcess  # noqa: E402

TARGET = 5.0  # seconds
RETRY = 0.1  # a publish not acked this soon is sent again (same guid)


def ft_server(url: str, tmp: str, n: int, ready_line: str) -> ServerProcess:
    return ServerProcess("-ns", url, "--ft_group", "bench", "-dir", os.path.join(tmp, f"s{n}"),
                         log_path=os.path.join(tmp, f"server{n}.log"), ready_line=ready_line)


async def publish_acked(c: RawStan, channel: str, guid: str) -> float:
    """Publish until acked; returns when the acked attempt was sent."""
    while True:
        sent = time.monotonic()
        try:
            ack = await asyncio.wait_for(c.publish(channel, b"x", guid=guid), RETRY)
            if not ack.error:
                return sent
        except Exception:  # timeout, or no connection while the server is gone
            pass


async def one_takeover(c: RawStan, active: ServerProcess, channels: int, run: int) -> float:
    killed = asyncio.Event()
    warm = asyncio.Event()  # publishing is under way
    killed_at = 0.0
    first = []

    async def publisher():
        i = 0
        while not first:
            guid = f"r{run}-{i}"
            sent = await publish_acked(c, f"ch.{i % channels}", guid)
            if killed.is_set() and sent > killed_at:
                first.append(time.monotonic())
            i += 1
            if i == 50:
                warm.set()
    task = asyncio.create_task(publisher())
    await warm.wait()
    killed_at = time.monotonic()
    killed.set()
    await active.kill()
    await task
    return first[0] - killed_at


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(BrokerConfig(store_dir=os.path.join(tmp, "js"))).start()
        procs = []
        try:
            active = await ft_server(broker.url, tmp, 0, "streaming server ready").start()
            procs.append(active)
            c = await RawStan.open(broker.url, "test-cluster", "bench-ft")
            assert (await c.connect()).error == ""
            for i in range(args.channels):  # state for the new active to load
                await publish_acked(c, f"ch.{i}", f"setup-{i}")
                await c.subscribe(f"ch.{i}", f"in.{i}", durable_name="d")
            times = []
            for run in range(args.runs):
                standby = await ft_server(broker.url, tmp, run + 1, "standing by").start()
                procs.append(standby)
                t = await one_takeover(c, active, args.channels, run)
                await standby.wait_line("streaming server ready")
                print(f"run {run + 1}: {t:.2f} s")
                times.append(t)
                active = standby
            await c.nc.close()
        finally:
            for p in procs:
                await p.stop()
            broker.stop()
    median = statistics.median(times)
    verdict = "ok" if median < TARGET else "MISSED"
    print(f"FT takeover (SIGKILL of the active -> first PubAck from the new one, "
          f"{args.channels} channels and durables): median {median:.2f} s over {len(times)} runs "
          f"(target < {TARGET:.0f} s) {verdict}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--channels", type=int, default=20)
    asyncio.run(main(p.parse_args()))
