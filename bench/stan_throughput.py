"""Streaming server figures: publish and delivery throughput, and recovery time.

    .venv/bin/python bench/stan_throughput.py [--msgs 20000] [--size 128] [--go-only]

First, side by side with the Go reference server: the Go client's
`stan-bench` against `nats-streaming-server -store file` and against ours
(embedded nats-server, file store), alternating, median of --rounds, and the
ratio beside its target. The reference binaries are found at
`../shared/reference/bin` from the repository root; without them that part is
skipped, saying why.

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
import re
import statistics
import sys
import tempfile
import time

import nats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402
from stanfleet.client import Client  # noqa: E402

from tests.streaming.serverproc import ServerProcess, free_port  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "bin")
# (label, stan-bench flags, messages, target ratio ours/Go)
GO_RUNS = (("async publish", ["-np", "1", "-ns", "0"], 50000, 0.6),
           ("sync publish", ["-np", "1", "-ns", "0", "-sync"], 3000, 2.0),
           ("publish + subscribe", ["-np", "1", "-ns", "1"], 50000, None))
_STATS = re.compile(r"^\s*(NATS Streaming Pub/Sub|Pub) stats: ([\d,]+) msgs/sec", re.M)

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


async def run_stan_bench(port: int, flags: list[str], n: int, size: int) -> float:
    proc = await asyncio.create_subprocess_exec(
        os.path.join(REFERENCE, "stan-bench"), "-s", f"nats://127.0.0.1:{port}", *flags,
        "-n", str(n), "-ms", str(size), f"bench{os.getpid()}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 600))[0].decode(errors="replace")
    found = dict((k, float(v.replace(",", ""))) for k, v in _STATS.findall(out))
    rate = found.get("NATS Streaming Pub/Sub") or found.get("Pub")
    if proc.returncode or rate is None:
        raise SystemExit(f"stan-bench failed ({proc.returncode}):\n{out[-2000:]}")
    return rate


async def one_server(kind: str, tmp: str, flags: list[str], n: int, size: int) -> float:
    """A fresh server of `kind` (go | ours) with a file store, one stan-bench run."""
    port = free_port()
    data = tempfile.mkdtemp(dir=tmp)
    if kind == "go":
        proc = await asyncio.create_subprocess_exec(
            os.path.join(REFERENCE, "nats-streaming-server"), "-a", "127.0.0.1", "-p", str(port),
            "-store", "file", "-dir", data, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        try:
            # Its NATS port opens before the streaming layer serves: wait for the log line.
            while b"Streaming Server is ready" not in await asyncio.wait_for(
                    proc.stdout.readline(), 60):
                pass
            drain = asyncio.create_task(proc.stdout.read())  # keep its pipe from filling
            return await run_stan_bench(port, flags, n, size)
        finally:
            proc.terminate()
            await proc.wait()
            if "drain" in locals():
                await drain
    server = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-dir", data)
    await server.start()
    try:
        return await run_stan_bench(port, flags, n, size)
    finally:
        await server.stop()


async def compare_with_go(args) -> None:
    if not os.path.exists(os.path.join(REFERENCE, "stan-bench")):
        print(f"Go comparison skipped: no reference binaries at {os.path.abspath(REFERENCE)} "
              "(see /work/shared/reference/README.md)")
        return
    print(f"side by side with the Go server (stan-bench, {args.size} B, file store, "
          f"median of {args.rounds}, alternating):")
    with tempfile.TemporaryDirectory(prefix="stanfleet-go-") as tmp:
        for label, flags, n, target in GO_RUNS:
            n = max(1000, int(n * args.go_scale))
            rates = {"go": [], "ours": []}
            for _ in range(args.rounds):
                for kind in ("go", "ours"):
                    rates[kind].append(await one_server(kind, tmp, flags, n, args.size))
            go, ours = (statistics.median(rates[k]) for k in ("go", "ours"))
            aim = f"  [target >= {target:g}x]" if target else ""
            # Each round's own ratio too: Go's figure swings with the machine's load.
            ratios = sorted(o / g for o, g in zip(rates["ours"], rates["go"]))
            print(f"  {label:20s} ours {ours:>9,.0f} msgs/s  Go {go:>9,.0f} msgs/s  "
                  f"ratio {ours / go:.2f}x{aim}\n  {'':20s} ours {_spread(rates['ours'])}  "
                  f"Go {_spread(rates['go'])}  per-round ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}", flush=True)


def _spread(rates: list[float]) -> str:
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


async def main(args) -> None:
    if args.go_scale > 0:
        await compare_with_go(args)
    if args.go_only:
        return
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
    p.add_argument("--rounds", type=int, default=3, help="runs per server in the Go comparison")
    p.add_argument("--go-scale", type=float, default=1.0,
                   help="scale the Go comparison's message counts (0 skips it)")
    p.add_argument("--go-only", action="store_true", help="only the Go comparison")
    a = p.parse_args()
    if uvloop is not None:
        uvloop.install()
    print(f"event loop: {'uvloop' if uvloop else 'asyncio'}; cores: {os.cpu_count()}")
    asyncio.run(main(a))
