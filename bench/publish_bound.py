"""What bounds async publish: CPU per process, and JetStream's own ceiling.

    .venv/bin/python bench/publish_bound.py [--msgs 50000] [--rounds 3] [--py-spy FILE]

For the Go server and ours (file store, fresh each run), runs the Go client's
`stan-bench` async publish and prints the rate and the CPU each process used
during it, as a share of one core: the streaming server, its nats-server
(ours: the embedded one) and stan-bench. Then the ceiling below us: a raw
JetStream publisher (a plain socket, PUBs with a reply inbox each, up to
--window in flight, the Nats-Msg-Id header our stores carry) into one file
stream of a fresh nats-server, with the same CPU figures. If that ceiling is
under 0.6x of Go's STAN figure, nats-server, not our relay, is the bound.

With --sync, a floor for any relay of ours: nats-server's request-reply
round trip through a minimal Python responder (a plain socket requester, an
asyncio Protocol on uvloop answering each request at once: the two passes
client -> relay -> client) plus the raw JetStream round trip (one in flight:
the two passes relay -> JetStream -> relay). However little our server did,
one publish awaiting its PubAck could not be faster than their sum here.

--py-spy FILE records our server during one extra run (py-spy from PyPI, not
a dependency): raw collapsed stacks, summarised here by own and total time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stan_throughput import REFERENCE, run_stan_bench  # noqa: E402
from stanfleet.broker import Broker, BrokerConfig  # noqa: E402

from tests.streaming.serverproc import ServerProcess, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
BENCH_FLAGS = ["-np", "1", "-ns", "0"]  # async publish; --sync adds -sync


def cpu_seconds(pid: int, kernel_only: bool = False) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    if kernel_only:
        return int(fields[12]) / TICK  # stime
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def child_named(ppid: int, name: str) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    head, rest = f.read().rsplit(")", 1)
            except OSError:
                continue
            if int(rest.split()[1]) == ppid and name in head:
                return int(entry)
    raise SystemExit(f"no {name} child of {ppid}")


def syscalls(pid: int) -> tuple[int, int]:
    """(read, write) system calls of pid so far."""
    with open(f"/proc/{pid}/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    return int(io["syscr"]), int(io["syscw"])


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, every core."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v) - idle) / TICK, sum(v) / TICK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


async def measured(pids: dict[str, int], run) -> tuple[float, dict[str, float]]:
    """(rate, share of one core per process) over one run; 'client' is the
    waited-for child the run starts (stan-bench)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    calls = {k: syscalls(p) for k, p in pids.items()}
    kernel = {k: cpu_seconds(p, True) for k, p in pids.items()}
    c0, m0, t0 = children_cpu(), machine_busy()[0], time.perf_counter()
    rate = await run()
    wall = time.perf_counter() - t0
    cpu = {k: (cpu_seconds(p) - before[k]) / wall for k, p in pids.items()}
    cpu["client"] = (children_cpu() - c0) / wall
    # Everything busy on the machine, ours and the other users' (shared cores).
    cpu["machine"] = (machine_busy()[0] - m0) / wall
    n = rate * wall
    for k, p in pids.items():  # reads and writes per message: batching, or not
        r, w = syscalls(p)
        cpu[f"{k} r/msg"] = (r - calls[k][0]) / n
        cpu[f"{k} w/msg"] = (w - calls[k][1]) / n
        cpu[f"{k} sys"] = (cpu_seconds(p, True) - kernel[k]) / wall
    return rate, cpu


async def go_run(tmp: str, n: int, size: int) -> tuple[float, dict]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        os.path.join(REFERENCE, "nats-streaming-server"), "-a", "127.0.0.1", "-p", str(port),
        "-store", "file", "-dir", tempfile.mkdtemp(dir=tmp),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        while b"Streaming Server is ready" not in await asyncio.wait_for(
                proc.stdout.readline(), 60):
            pass
        drain = asyncio.create_task(proc.stdout.read())
        # One process: its NATS server and the streaming layer share it.
        return await measured({"server": proc.pid}, lambda: run_stan_bench(
            port, BENCH_FLAGS, n, size))
    finally:
        proc.terminate()
        await proc.wait()
        if "drain" in locals():
            await drain


async def ours_run(tmp: str, n: int, size: int, spy: str | None = None) -> tuple[float, dict]:
    port = free_port()
    server = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-dir", tempfile.mkdtemp(dir=tmp))
    await server.start()
    try:
        pids = {"server": server.proc.pid,
                "nats-server": child_named(server.proc.pid, "nats-server")}
        recorder = None
        if spy:
            recorder = await asyncio.create_subprocess_exec(
                shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy"),
                "record", "--format", "raw", "-r", "200", *(["--native"] if os.environ.get("SPY_NATIVE") else []), "-o", spy, "-p", str(pids["server"]),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await asyncio.sleep(1)  # py-spy attaching; not a synchronisation of ours
        try:
            return await measured(pids, lambda: run_stan_bench(
                port, BENCH_FLAGS, n, size))
        finally:
            if recorder:
                recorder.send_signal(2)
                await recorder.wait()
    finally:
        await server.stop()


def raw_client(port: int, subject: str) -> socket.socket:
    """A plain-socket NATS client subscribed to `subject` (sid 1), once the
    server has answered its PING."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
              b"SUB %s 1\r\nPING\r\n" % subject.encode())
    buf = b""
    while b"PONG" not in buf:
        buf += s.recv(65536)
    return s


def raw_publish(port: int, subject: str, n: int, size: int, window: int) -> float:
    """JetStream publishes from a plain socket, `window` in flight: the store
    path of our relay without STAN in front (one JSON ack per message)."""
    s = raw_client(port, "ceil.ack.*")
    payload = os.urandom(size)
    sent = acked = 0
    t0 = time.perf_counter()
    while acked < n:
        batch = []
        while sent < n and sent - acked < window and len(batch) < 256:
            hdr = b"NATS/1.0\r\nNats-Msg-Id: g%d\r\n\r\n" % sent
            batch.append(b"HPUB %s ceil.ack.%d %d %d\r\n%s%s\r\n" % (
                subject.encode(), sent, len(hdr), len(hdr) + size, hdr, payload))
            sent += 1
        if batch:
            s.sendall(b"".join(batch))
        data = s.recv(1 << 20)
        if not data:
            raise SystemExit("nats-server closed the connection")
        acked += data.count(b'"seq"')
        if b"PING" in data:
            s.sendall(b"PONG\r\n")
    s.close()
    return n / (time.perf_counter() - t0)


class _Echo(asyncio.Protocol):
    """Answers every message on `echo` at once: our relay with nothing to do."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
        transport.write(b'CONNECT {"verbose":false}\r\nSUB echo 1\r\nPING\r\n')

    def data_received(self, data):
        self.buf += data
        while (i := self.buf.find(b"\r\n")) >= 0:
            line = self.buf[:i]
            if not line.startswith(b"MSG "):
                self.buf = self.buf[i + 2:]
                if line == b"PING":
                    self.transport.write(b"PONG\r\n")
                continue
            _, _, _, reply, size = line.split(b" ")
            end = i + 2 + int(size) + 2
            if len(self.buf) < end:
                return
            payload, self.buf = self.buf[i + 2:end - 2], self.buf[end:]
            self.transport.write(b"PUB %s %d\r\n%s\r\n" % (reply, len(payload), payload))


def echo_responder(port: int) -> None:
    """The responder process (--echo-responder PORT): uvloop, as our server runs."""
    import uvloop

    async def serve():
        await asyncio.get_running_loop().create_connection(_Echo, "127.0.0.1", port)
        await asyncio.Event().wait()
    uvloop.run(serve())


def echo_requests(port: int, n: int, size: int) -> float:
    """Requests one at a time from a plain socket; their rate."""
    s = raw_client(port, "r")
    payload = os.urandom(size)
    request = b"PUB echo r %d\r\n%s\r\n" % (size, payload)
    answer_len = len(b"MSG r 1 %d\r\n" % size) + size + 2
    # Until one is answered the responder may not be subscribed yet (a request
    # before its SUB is dropped): asked again each 0.2 s. Then the timed ones.
    s.settimeout(0.2)
    while True:
        s.sendall(request)
        try:
            if b"MSG r" in s.recv(65536):
                break
        except socket.timeout:
            continue
    s.settimeout(None)
    time.sleep(0.3)  # a late answer to a repeated request comes and goes
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
    except BlockingIOError:
        pass
    s.setblocking(True)
    t0 = time.perf_counter()
    for _ in range(n):
        s.sendall(request)
        got = 0
        while got < answer_len:
            got += len(s.recv(65536))
    s.close()
    return n / (time.perf_counter() - t0)


async def echo_run(tmp: str, n: int, size: int) -> float:
    broker = Broker(BrokerConfig(store_dir=tempfile.mkdtemp(dir=tmp))).start()
    responder = None
    try:
        port = int(broker.url.rsplit(":", 1)[1])
        responder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--echo-responder", str(port))
        return await asyncio.to_thread(echo_requests, port, n, size)
    finally:
        if responder is not None:
            responder.kill()
            await responder.wait()
        broker.stop()


async def ceiling_run(tmp: str, n: int, size: int, window: int) -> tuple[float, dict]:
    broker = Broker(BrokerConfig(store_dir=tempfile.mkdtemp(dir=tmp))).start()
    try:
        import nats
        nc = await nats.connect(broker.url)
        await nc.jetstream().add_stream(name="CEIL", subjects=["ceil.store"], storage="file")
        await nc.close()
        port = int(broker.url.rsplit(":", 1)[1])
        pid = broker.proc.pid
        before = cpu_seconds(pid)
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        m0, t0 = machine_busy()[0], time.perf_counter()
        rate = await asyncio.to_thread(raw_publish, port, "ceil.store", n, size, window)
        wall = time.perf_counter() - t0
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        return rate, {"nats-server": (cpu_seconds(pid) - before) / wall,
                      "machine": (machine_busy()[0] - m0) / wall,
                      "client": (self1.ru_utime + self1.ru_stime
                                 - self0.ru_utime - self0.ru_stime) / wall}
    finally:
        broker.stop()


def summarise(spy: str, top: int = 25) -> None:
    own, total = collections.Counter(), collections.Counter()
    samples = 0
    with open(spy) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            c = int(count)
            samples += c
            frames = stack.split(";")
            own[frames[-1]] += c
            for fr in set(frames):
                total[fr] += c
    print(f"py-spy: {samples} samples of our server")
    for title, table in (("own time", own), ("total time", total)):
        print(f"  by {title}:")
        for fr, c in table.most_common(top):
            print(f"    {100 * c / samples:5.1f}%  {fr[:110]}")


def line(label: str, rates: list[float], cpus: list[dict]) -> None:
    """Rate, then per process: cores busy, CPU per message, system calls per message."""
    def med(key):
        return statistics.median(c.get(key, 0) for c in cpus)
    rate = statistics.median(rates)
    parts = []
    for proc in ("server", "nats-server", "client"):
        if any(proc in c for c in cpus):
            part = f"{proc} {med(proc):.2f} cores = {1e6 * med(proc) / rate:.1f} us/msg"
            if any(f"{proc} w/msg" in c for c in cpus):
                part += (f" ({med(proc + ' sys') / med(proc):.0%} kernel, reads/msg "
                         f"{med(proc + ' r/msg'):.2f}, writes/msg {med(proc + ' w/msg'):.2f})")
            parts.append(part)
    parts.append(f"whole machine busy {med('machine'):.2f} of {os.cpu_count()} cores")
    print(f"  {label:28s} {rate:>9,.0f} msgs/s ({min(rates):,.0f}-{max(rates):,.0f})\n      "
          + "\n      ".join(parts), flush=True)


async def main(args) -> None:
    if not os.path.exists(os.path.join(REFERENCE, "stan-bench")):
        raise SystemExit(f"no reference binaries at {os.path.abspath(REFERENCE)}")
    print(f"{'one-at-a-time' if args.sync else 'async'} publish, {args.size} B, file store, median of {args.rounds} "
          f"(range), {os.cpu_count()} cores:")
    with tempfile.TemporaryDirectory(prefix="stanfleet-bound-") as tmp:
        results = {k: ([], []) for k in args.only.split(",")}
        echo = []
        for _ in range(args.rounds):
            if args.sync and "ceiling" in results:
                echo.append(await echo_run(tmp, args.msgs, args.size))
            for kind in results:
                if kind == "go":
                    r, c = await go_run(tmp, args.msgs, args.size)
                elif kind == "ours":
                    r, c = await ours_run(tmp, args.msgs, args.size)
                else:
                    r, c = await ceiling_run(tmp, args.msgs, args.size, args.window)
                results[kind][0].append(r)
                results[kind][1].append(c)
        labels = {"go": "Go STAN server", "ours": "ours",
                  "ceiling": f"raw JetStream ({args.window} in flight)"}
        for kind, (rates, cpus) in results.items():
            line(labels[kind], rates, cpus)
        if "go" in results:
            go = statistics.median(results["go"][0])
            print("  " + "; ".join(f"{k} / Go: {statistics.median(results[k][0]) / go:.2f}x"
                                   for k in results if k != "go"))
        if echo:
            rt_echo = 1e6 / statistics.median(echo)
            rt_js = 1e6 / statistics.median(results["ceiling"][0])
            floor = 1e6 / (rt_echo + rt_js)
            print(f"  request-reply through a bare responder {statistics.median(echo):>7,.0f} "
                  f"msgs/s ({min(echo):,.0f}-{max(echo):,.0f}) = {rt_echo:.0f} us a round trip")
            print(f"  floor for any relay: {rt_echo:.0f} + {rt_js:.0f} us = {floor:,.0f} msgs/s"
                  + (f" = {floor / statistics.median(results['go'][0]):.2f}x Go"
                     if "go" in results else ""))
        if args.py_spy:
            await ours_run(tmp, args.msgs, args.size, spy=args.py_spy)
            summarise(args.py_spy)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--echo-responder"]:
        echo_responder(int(sys.argv[2]))
        raise SystemExit(0)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--msgs", type=int, default=50000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=1024, help="raw publisher's stores in flight")
    p.add_argument("--only", default="go,ours,ceiling",
                   help="comma-separated: go (Go STAN server), ours, ceiling (raw JetStream)")
    p.add_argument("--py-spy", metavar="FILE", help="record our server with py-spy to FILE")
    p.add_argument("--sync", action="store_true",
                   help="one-at-a-time publish instead (stan-bench -sync; raw window 1)")
    p.add_argument("--subscribe", action="store_true",
                   help="publish + one subscriber (stan-bench -ns 1); no raw ceiling")
    a = p.parse_args()
    if a.subscribe:
        BENCH_FLAGS[BENCH_FLAGS.index("-ns") + 1] = "1"
    if a.sync:
        BENCH_FLAGS.append("-sync")
        a.window = 1
    asyncio.run(main(a))
