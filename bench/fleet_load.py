"""Fleet load: N device-like STAN clients against one `stanfleet streaming-server`.

    .venv/bin/python bench/fleet_load.py --devices 1000 [--secure] [--storm server|clients]

Each simulated device does what the firmware does (firmware/app/device.py,
firmware/lib/stan.py): STAN connect as `device-<ID>`, durable subscriptions
on its cfg channel and on `devices.releases` (start at the last message),
a status message, then a reading every --interval seconds awaiting its
PubAck (retried under the same guid until acked), protocol-1 pings every 5 s
(none in an interval that had a PubAck, as the firmware)
and answers to the server's heartbeats.

The devices run in --procs worker processes (bench/fleet_devices.py; default
one per core, at most 8), each with its share of the devices; this process
starts the server, drives the phases and merges the workers' figures. With --secure every device logs in over TLS with its own
password (creds.py accounts, bcrypt cost --bcrypt-rounds) and the server
runs with --security-dir, as `stanfleet up` does.

Storms: `server` SIGKILLs the streaming server (its embedded nats-server
goes with it) and restarts it; `clients` drops every device's connection at
once. Afterwards a cfg message goes to each device once it publishes again,
and one release to all once every device does; the bench times until every
device has a new reading acked and both messages delivered (its durables are
live again). Last, every device's acked readings are compared with what its
events stream holds.

Load only to 127.0.0.1. Figures on a shared 2-core machine are pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time

import nats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import fleet_devices  # noqa: E402  (next to this file)
from stanfleet.defaults import DEVICE_CHANNEL_FAMILIES  # noqa: E402
from stanfleet.streaming.families import family_of  # noqa: E402
from stanfleet.streaming.naming import Subjects  # noqa: E402

from tests.streaming.serverproc import ServerProcess, free_port  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None

DEFAULT_DEVICES = 200
DEFAULT_INTERVAL = 10.0  # s between readings
DEFAULT_RAMP = 20.0  # s over which devices start
DEFAULT_DURATION = 40.0  # s of steady load before the storm
DEFAULT_DEADLINE = 300.0  # give up waiting for a phase after this long
DEFAULT_PROCS = max(1, min(os.cpu_count() or 1, 8))
DEFAULT_POLL = 0.1  # s between looks at the workers' counters while timing a phase
BENCH_CONNECT_TIMEOUT = 20.0  # s for the bench's own NATS connections and requests (under load)
CLUSTER = fleet_devices.CLUSTER
TARGETS = {"connect": 60.0, "p99_ms": 100.0, "recovery": 60.0}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


class Workers:
    """The fleet over --procs worker processes (fleet_devices.py), seen as one.
    Device i goes to worker i % procs, so every worker ramps over the whole
    --ramp and carries the same load."""

    def __init__(self, args, port: int, ca: str | None, passwords: dict):
        self.args = args
        self.ids = [f"B{i:06d}" for i in range(args.devices)]
        ctx = multiprocessing.get_context("spawn")  # not fork: this process runs a loop
        self.conns, self.procs = [], []
        for w in range(args.procs):
            mine = [(i, d) for i, d in enumerate(self.ids) if i % args.procs == w]
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=fleet_devices.worker, daemon=True, args=(
                theirs, args, port, ca, {d: passwords[d] for _, d in mine if d in passwords},
                mine))
            p.start()
            self.conns.append(ours)
            self.procs.append(p)
        self.start_done = 0.0

    async def ask(self, *cmd) -> list:
        """One command to every worker; their answers."""
        loop = asyncio.get_running_loop()

        def one(conn):
            conn.send(cmd)
            return conn.recv()
        return await asyncio.gather(*(loop.run_in_executor(None, one, c) for c in self.conns))

    async def count(self, key: str, since_pub: float = 0.0, since_push: float = 0.0) -> int:
        return sum(s[key] for s in await self.ask("status", since_pub, since_push))

    async def start(self) -> tuple[float, float]:
        """(s until every device had its STAN session, s until every one was ready)."""
        await self.ask("status", 0.0, 0.0)  # every worker is up (spawned, imported)
        t0 = time.monotonic()
        await self.ask("start", t0, self.args.ramp / max(1, self.args.devices))
        n = self.args.devices
        # The ramp runs in the workers now: its time counts toward the deadline.
        await until(lambda: self.count("ready"), n, "all devices ready",
                    deadline=self.args.ramp + DEFAULT_DEADLINE)
        self.start_done = time.monotonic()
        sessions = max(s["last_session"] for s in await self.ask("status", 0.0, 0.0))
        return sessions - t0, self.start_done - t0

    async def report(self, cmd: str = "report") -> dict:
        out = {"timeline": [], "recovery_lat": [], "lag": [], "gc_pauses": [], "errors": {},
               "renewals": 0, "acked": {}}
        for r in await self.ask(cmd):
            for k in ("timeline", "recovery_lat", "lag", "gc_pauses"):
                out[k] += r[k]
            for k, v in r["errors"].items():
                out["errors"][k] = out["errors"].get(k, 0) + v
            out["renewals"] += r["renewals"]
            out["acked"].update(r["acked"])
        return out

    async def stop(self) -> dict:
        """Every device stops; the final figures."""
        out = await self.report("stop")
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        return out


async def until(count, n: int, what: str, deadline: float = DEFAULT_DEADLINE) -> None:
    """Poll the workers' counters until `count()` reaches n (not a
    synchronisation with the server: the bench measures how long it takes)."""
    end = time.monotonic() + deadline
    last = time.monotonic()
    while (got := await count()) < n:
        if time.monotonic() > end:
            raise SystemExit(f"gave up waiting for {what} after {deadline:.0f} s: {got}/{n}")
        if time.monotonic() - last > 10:
            print(f"  ... waiting for {what}: {got}/{n}", flush=True)
            last = time.monotonic()
        await asyncio.sleep(DEFAULT_POLL)


def worst_windows(timeline: list[tuple[float, float]], t0: float, n: int = 3) -> str:
    """Where the tail comes from: a few bad moments or everywhere."""
    buckets: dict[int, list[float]] = {}
    for t, lat in timeline:
        buckets.setdefault(int((t - t0) // 5), []).append(lat)
    worst = sorted(((k, v) for k, v in buckets.items() if k >= 0),
                   key=lambda kv: -pct(kv[1], 99))[:n]
    return "; ".join(f"{k * 5:+d}s: p99 {pct(v, 99) * 1e3:.0f} ms ({len(v)} readings)"
                     for k, v in sorted(worst)) or "none"


def rss_mb(pid: int | None) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, TypeError):
        pass
    return float("nan")


def child_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def make_security(tmp: str, ids: list[str], rounds: int) -> tuple[str, dict, tuple]:
    """A security dir as `stanfleet up` makes it; returns (dir, passwords, service login)."""
    from stanfleet.security import creds
    from stanfleet.security.certs import init

    sec = os.path.join(tmp, "security")
    store = creds.Store(sec, cluster_id=CLUSTER)
    init(store.certs_dir, ["localhost", "127.0.0.1"])
    store.server_login()
    rounds = rounds or creds.BCRYPT_ROUNDS
    creds.BCRYPT_ROUNDS = rounds
    t0 = time.monotonic()
    paths = store.add_devices(ids)
    print(f"credentials: {len(ids)} devices in {time.monotonic() - t0:.1f} s "
          f"(bcrypt cost {rounds}); accounts file "
          f"{os.path.getsize(store.accounts_file) / 1e6:.1f} MB", flush=True)
    store.add_service("admin")
    passwords = {}
    for p in paths:
        with open(p) as f:
            c = json.load(f)
        passwords[c["device_id"]] = c["password"]
    with open(store.path("services", "admin.json")) as f:
        admin = json.load(f)
    return sec, passwords, (admin["user"], admin["password"])


async def service_client(args, port: int, sec: str | None, login):
    from stanfleet.client import Client

    opts = {}
    if sec:
        from stanfleet.security.certs import client_context
        opts = dict(tls=client_context(os.path.join(sec, "certs", "ca.pem")),
                    tls_hostname="127.0.0.1", user=login[0], password=login[1],
                    inbox_prefix=f"_INBOX.{login[0]}")
    scheme = "tls" if sec else "nats"
    nc = await nats.connect(f"{scheme}://127.0.0.1:{port}", max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, connect_timeout=BENCH_CONNECT_TIMEOUT,
                            **opts)
    sc = Client()
    await sc.connect(CLUSTER, f"bench-admin-{os.getpid()}", nats=nc)
    return sc, nc


def _split(text: str) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


async def count_stored(port: int, sec: str | None, families: str, acked: dict) -> int:
    """Acked readings missing from the events streams."""
    opts = {}
    if sec:
        from stanfleet.security.certs import client_context
        with open(os.path.join(sec, "stan.secret")) as f:
            pw = f.read().strip()
        opts = dict(tls=client_context(os.path.join(sec, "certs", "ca.pem")),
                    tls_hostname="127.0.0.1", user="stan", password=pw)
    # A TLS handshake can take seconds while 10,000 devices are connected.
    nc = await nats.connect(f"{'tls' if sec else 'nats'}://127.0.0.1:{port}",
                            connect_timeout=BENCH_CONNECT_TIMEOUT, **opts)
    # Listing 10,000 channels' subjects takes seconds while the fleet's
    # connections are still being torn down.
    jsm = nc.jsm(timeout=BENCH_CONNECT_TIMEOUT)
    subjects = Subjects(CLUSTER)
    sem = asyncio.Semaphore(64)
    lost = 0

    family = family_of(_split(families), "devices.X.events")
    if family is not None:
        # One stream for all events channels: its message count per subject.
        info = await jsm.stream_info(subjects.stream_for(family),
                                     subjects_filter=subjects.store_subject(family))
        stored = info.state.subjects or {}
        for d, n in acked.items():
            lost += max(0, n - stored.get(subjects.store_subject(f"devices.{d}.events"), 0))
        await nc.close()
        return lost

    async def one(d, n):
        nonlocal lost
        async with sem:
            info = await jsm.stream_info(subjects.stream_for(f"devices.{d}.events"))
        lost += max(0, n - info.state.messages)
    await asyncio.gather(*(one(d, n) for d, n in acked.items()))
    await nc.close()
    return lost


async def main(args) -> None:
    loop_name = "uvloop" if uvloop else "asyncio"
    print(f"fleet load: {args.devices} devices, a reading every {args.interval:g} s, "
          f"{'TLS + authorization' if args.secure else 'plaintext, no auth'}; event loop "
          f"{loop_name}; {args.procs} generator processes; cores {os.cpu_count()} (shared: "
          f"figures are pessimistic)", flush=True)
    ids = [f"B{i:06d}" for i in range(args.devices)]
    with tempfile.TemporaryDirectory(prefix="stanfleet-fleet-") as tmp:
        sec, passwords, login = None, {}, None
        if args.secure:
            sec, passwords, login = await asyncio.to_thread(make_security, tmp, ids,
                                                            args.bcrypt_rounds)
        port = free_port()
        # File store: a restart must find what was acked before the kill (the
        # command line's default, memory, as Go's, starts clean).
        sargs = ["-a", "127.0.0.1", "-p", str(port), "-dir", os.path.join(tmp, "data"),
                 "-cid", CLUSTER, "-store", args.store]
        if sec:
            sargs += ["--security-dir", sec]
        if args.families:
            sargs += ["--channel_families", args.families]
        server = ServerProcess(*sargs, log_path=os.path.join(args.log_dir or tmp, "server.log"))
        await server.start(timeout=120)
        ca = os.path.join(sec, "certs", "ca.pem") if sec else None
        base = (rss_mb(server.proc.pid), rss_mb(child_pid(server.proc.pid)))
        fleet = Workers(args, port, ca, passwords)
        final = None
        try:
            session_s, connect_s = await fleet.start()
            pids = (server.proc.pid, child_pid(server.proc.pid))
            print(f"connect: all {args.devices} connected (STAN session answered) in "
                  f"{session_s:.1f} s and ready (session, 2 durables, status acked) in "
                  f"{connect_s:.1f} s, ramp {args.ramp:g} s  [target < {TARGETS['connect']:g} s]",
                  flush=True)
            await asyncio.sleep(args.duration)
            steady = await fleet.report()
            ramp = [lat for t, lat in steady["timeline"] if t < fleet.start_done]
            lat = [lat for t, lat in steady["timeline"] if t >= fleet.start_done]
            print(f"PubAck, steady load ({len(lat)} readings after all were ready): "
                  f"p50 {pct(lat, 50) * 1e3:.1f} ms, p99 {pct(lat, 99) * 1e3:.1f} ms, "
                  f"max {max(lat or [0]) * 1e3:.1f} ms  [target p99 < {TARGETS['p99_ms']:g} ms]; "
                  f"while others connected ({len(ramp)}): p99 {pct(ramp, 99) * 1e3:.0f} ms",
                  flush=True)
            srv, nsrv = rss_mb(pids[0]), rss_mb(pids[1])
            per_k = [(now - was) / max(1, args.devices) * 1000
                     for now, was in ((srv, base[0]), (nsrv, base[1]))]
            print(f"RSS: streaming server {srv:.0f} MB, nats-server {nsrv:.0f} MB with "
                  f"{args.devices * 3 + 1} channels and {args.devices * 2} durables; per 1,000 "
                  f"devices above the idle server: {per_k[0]:.0f} MB + {per_k[1]:.0f} MB",
                  flush=True)
            print("slowest 5 s windows (from the end of the ramp): " + worst_windows(
                steady["timeline"], fleet.start_done), flush=True)
            print(f"generator event-loop lag (all {args.procs} processes): p99 "
                  f"{pct(steady['lag'], 99) * 1e3:.0f} ms, max "
                  f"{max(steady['lag'] or [0]) * 1e3:.0f} ms; full collections so far "
                  f"{len(steady['gc_pauses'])}, longest "
                  f"{max(steady['gc_pauses'] or [0]) * 1e3:.0f} ms", flush=True)
            if args.storm != "none":
                await storm(args, fleet, server, port, sec, login)
            final = await fleet.stop()
            lost = await count_stored(port, sec, args.families, final["acked"])
            print(f"readings lost: {lost} of {sum(final['acked'].values())} acked  "
                  f"[target 0]", flush=True)
        finally:
            if final is None:
                final = await fleet.stop()
            await server.stop()
        if final["errors"]:
            print("errors seen by devices (count): " + ", ".join(
                f"{k!r}: {v}" for k, v in sorted(final["errors"].items(), key=lambda kv: -kv[1])))


async def storm(args, fleet: Workers, server: ServerProcess, port: int, sec, login) -> None:
    await fleet.ask("storming", True)
    t0 = time.monotonic()
    if args.storm == "server":
        await server.kill()
        t_killed = time.monotonic()
        await server.start(timeout=300)
        print(f"storm: SIGKILL + restart; server ready {time.monotonic() - t_killed:.1f} s "
              f"after the kill", flush=True)
    else:
        await fleet.ask("drop")
        print("storm: every device dropped its connection at once", flush=True)
    t_restart = time.monotonic()
    n = args.devices
    # A cfg message goes to each device as soon as it publishes again, and one
    # release once all do: each device's two durables must deliver them. (Sent
    # to a device still reconnecting, a message waits out its ack_wait, 30 s
    # or 90 s: STAN's rule, not a fault. Sent to all at the end, the bench's
    # own 10,000 publishes, ~12 s, counted as the server's recovery.)
    sc, nc = await service_client(args, port, sec, login)
    tag = json.dumps({"tag": f"storm-{int(t0)}"}).encode()
    sem = asyncio.Semaphore(512)
    pushes: list[asyncio.Task] = []

    async def push(d: str) -> None:
        async with sem:
            await sc.publish(f"devices.{d}.cfg", tag)

    async def back() -> int:
        for part in await fleet.ask("back", t_restart):
            pushes.extend(asyncio.create_task(push(d)) for d in part)
        return len(pushes)
    await until(back, n, "every device publishing")
    publishing = time.monotonic() - t_restart
    await sc.publish("devices.releases", json.dumps({"version": tag.decode()}).encode())
    await asyncio.gather(*pushes)
    pushed = time.monotonic() - t_restart
    await until(lambda: fleet.count("delivering", since_push=t_restart), n,
                "every durable delivering")
    resubscribed = time.monotonic() - t_restart
    try:
        await sc.close()
    except Exception as e:  # noqa: BLE001 - not a figure; the server is busy delivering
        print(f"  (the service client's close failed: {e!r})", flush=True)
    await nc.close()
    r = await fleet.report()
    lat = r["recovery_lat"]
    print(f"recovery: every device publishing {publishing:.1f} s and both durables delivering "
          f"{resubscribed:.1f} s after {'the restart' if args.storm == 'server' else 'the drop'}"
          f" ({time.monotonic() - t0:.1f} s from the storm)  [target < {TARGETS['recovery']:g} s]; "
          f"{r['renewals']} sessions renewed; the {n} cfg messages all sent "
          f"{pushed:.1f} s after the restart; PubAck during recovery p99 "
          f"{pct(lat, 99) * 1e3:.0f} ms, max {max(lat or [0]) * 1e3:.0f} ms", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    p.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    p.add_argument("--ramp", type=float, default=DEFAULT_RAMP)
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION,
                   help="seconds of steady load measured before the storm")
    p.add_argument("--storm", choices=("server", "clients", "none"), default="server")
    p.add_argument("--procs", type=int, default=DEFAULT_PROCS,
                   help="generator processes the devices are split over (default: one per "
                        "core, at most 8)")
    p.add_argument("--secure", action="store_true", help="TLS and per-device passwords, --authz")
    p.add_argument("--bcrypt-rounds", type=int, default=None,
                   help="bcrypt cost of the device passwords (default: the product's, "
                        "creds.BCRYPT_ROUNDS); try 11 to see what a slow hash costs a fleet")
    p.add_argument("--log-dir", default=None, help="keep the server log here")
    p.add_argument("--store", choices=("file", "memory"), default="file",
                   help="the server's -store (memory loses everything at a SIGKILL)")
    p.add_argument("--families", default=",".join(DEVICE_CHANNEL_FAMILIES),
                   help="the server's --channel_families (default: the device channels, as "
                        "`stanfleet up`); '' for a stream per channel")
    a = p.parse_args()
    if a.devices > 20000:
        raise SystemExit("bounded to 20,000 devices")
    if a.procs < 1:
        raise SystemExit("--procs must be at least 1")
    if a.log_dir:
        os.makedirs(a.log_dir, exist_ok=True)  # the server's reader would die on a missing one
    if uvloop is not None:
        uvloop.install()
    asyncio.run(main(a))
