"""Start and restart time of the streaming server, ours beside the Go binary's.

    .venv/bin/python bench/start_time.py [--runs 5] [--store file|memory]

start-to-port:   exec to the client port accepting a TCP connection
start-to-ready:  exec to `_STAN.discover.<cluster>` answered
term-to-ready:   SIGTERM of a running server to its successor (same port, same
                 data directory, exec'd at once) answering discover
kill-to-ready:   the same after SIGKILL
cpu-to-ready:    CPU time (user + system, all threads) the server process had
                 used when discover was answered, its nats-server child not
                 included: on shared cores the steadiest of these figures,
                 since what bounds our start is CPU, not waiting

The probe is a raw socket speaking the NATS text protocol (no client library
to import in the measuring loop): connect, SUB an inbox, publish a
ConnectRequest to discover every 2 ms until the reply comes, as harnesses poll.
Target: 150 ms for every figure (issue 13). The Go reference binary is found at
../shared/reference/bin from the project root and skipped when absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))
from stanfleet.pb import protocol_pb2 as pb  # noqa: E402

GO_BINARY = ROOT.parent / "shared" / "reference" / "bin" / "nats-streaming-server"
OURS = [str(Path(sys.executable).parent / "stanfleet"), "streaming-server"]
TARGET_MS = 150.0
DEFAULT_RUNS = 5
POLL_S = 0.002
GIVE_UP_S = 20.0


class NeverReady(RuntimeError):
    """No discover answer within GIVE_UP_S: the server did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port: int, t0: float) -> tuple[float, float]:
    """(ms to port open, ms to discover answered), both from t0. A connection the
    server closes (a predecessor still shutting down) is opened again."""
    deadline = time.monotonic() + GIVE_UP_S
    t_port = None
    while True:
        if time.monotonic() > deadline:
            raise NeverReady("discover never answered")
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            time.sleep(POLL_S)
            continue
        t_port = t_port or time.monotonic()
        try:
            if _discover(sock, deadline):
                return (t_port - t0) * 1000, (time.monotonic() - t0) * 1000
        finally:
            sock.close()


def _discover(sock: socket.socket, deadline: float) -> bool:
    req = pb.ConnectRequest(client_id=f"probe{os.getpid()}", heartbeat_inbox="_INBOX.hb",
                            protocol=1, conn_id=os.urandom(8), ping_interval=5,
                            ping_max_out=3).SerializeToString()
    pub = b"PUB _STAN.discover.test-cluster _INBOX.probe %d\r\n" % len(req) + req + b"\r\n"
    sock.settimeout(POLL_S)
    buf = b""
    try:
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.probe 1\r\n')
        while b"MSG _INBOX.probe" not in buf:
            if time.monotonic() > deadline:
                return False
            sock.sendall(pub)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return False
            buf = buf[-100:] + chunk
    except OSError:
        return False
    return True


def cpu_ms(pid: int) -> float:
    """utime + stime of a running process, from /proc (clock ticks: 10 ms steps)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def spawn(cmd: list[str], port: int, data: str, store: str) -> subprocess.Popen:
    args = cmd + ["-a", "127.0.0.1", "-p", str(port), "-store", store, "-dir", data]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def measure(cmd: list[str], runs: int, store: str) -> tuple[dict[str, list[float]], dict]:
    """The figures of each run, and per figure how many runs never got that far
    (a run stops at its first failure; its processes are killed)."""
    out = {"start-to-port": [], "start-to-ready": [], "term-to-ready": [], "kill-to-ready": [],
           "cpu-to-ready": []}
    failed = dict.fromkeys(out, 0)
    for _ in range(runs):
        data = tempfile.mkdtemp(prefix="start-bench-")
        port = free_port()
        procs = []
        stage = "start-to-ready"
        try:
            t0 = time.monotonic()
            procs.append(p := spawn(cmd, port, data, store))
            t_port, t_ready = probe(port, t0)
            out["start-to-port"].append(t_port)
            out["start-to-ready"].append(t_ready)
            out["cpu-to-ready"].append(cpu_ms(p.pid))
            for sig, stage in ((signal.SIGTERM, "term-to-ready"), (signal.SIGKILL, "kill-to-ready")):
                t0 = time.monotonic()
                p.send_signal(sig)
                if sig == signal.SIGTERM:
                    p.wait()  # a harness waits for the exit before it starts the next one
                procs.append(nxt := spawn(cmd, port, data, store))
                out[stage].append(probe(port, t0)[1])
                if sig == signal.SIGKILL:
                    p.wait()
                p = nxt
            p.send_signal(signal.SIGTERM)
            p.wait(10)
        except NeverReady:
            failed[stage] += 1
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(data, ignore_errors=True)
    return out, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--store", default="file", choices=("file", "memory"))
    a = ap.parse_args()
    # Bytecode as an installed package has it (pip compiles at install; an
    # editable checkout under PYTHONDONTWRITEBYTECODE would compile every start).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "server")],
                   check=True, stdout=subprocess.DEVNULL)
    rows, failures = {}, {}
    rows["stanfleet"], failures["stanfleet"] = measure(OURS, a.runs, a.store)
    if GO_BINARY.exists():
        rows["go"], failures["go"] = measure([str(GO_BINARY)], a.runs, a.store)
    else:
        print(f"(Go reference binary not found at {GO_BINARY}: ours only)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"store={a.store}, {a.runs} runs, median (max) in ms; target {TARGET_MS:.0f} ms; "
          f"load average {load} on {os.cpu_count()} cores")
    names = list(rows["stanfleet"])
    print(f"{'':16}" + "".join(f"{who:>22}" for who in rows))
    for name in names:
        cells = []
        for figures in rows.values():
            got = figures[name]
            cells.append(f"{statistics.median(got):9.0f} ({max(got):5.0f})" if got else "none")
        ours = rows["stanfleet"][name]
        verdict = "ok" if ours and statistics.median(ours) <= TARGET_MS else "OVER"
        print(f"{name:16}" + "".join(f"{c:>22}" for c in cells) + f"   {verdict}")
    for who, failed in failures.items():
        for name, n in failed.items():
            if n:
                print(f"{who}: {name}: {n} of {a.runs} runs got no discover answer within "
                      f"{GIVE_UP_S:.0f} s (the run stopped there)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
