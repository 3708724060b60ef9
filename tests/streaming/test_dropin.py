"""`stanfleet streaming-server` where scripts and test harnesses start
nats-streaming-server: Go's process flags (-l, -P, -sl, -v), a clean MEMORY
store by default, Go's configuration file, NATS monitoring on -m, a plain NATS
cluster out of --cluster/--routes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from importlib import metadata

import nats
from stanfleet.pb import protocol_pb2 as pb

from ..waiting import eventually
from .rawstan import RawStan
from .serverproc import ServerProcess, free_port

EXE = os.path.join(os.path.dirname(sys.executable), "stanfleet")


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "streaming-server", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


async def get_json(port: int, path: str) -> dict:
    def fetch():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.load(r)
    return await asyncio.to_thread(fetch)


def monitor_port(proc: ServerProcess) -> int:
    line = next(x for x in proc.lines if "monitoring on http" in x)
    return int(line.rsplit(":", 1)[1])


def test_version_help_and_refusals_are_one_line():
    out = cli("-v")
    assert out.returncode == 0
    assert "nats-streaming-server 0.25.6 compatible" in out.stdout and "nats-server: v" in out.stdout
    help_text = " ".join(cli("--help").stdout.split())
    assert "the store is MEMORY, as in Go" in help_text and "-store file -dir DIR" in help_text
    assert "--tlsverify" in cli("--help_tls").stdout
    for argv, why in ((("-store", "sql"), "the SQL store is not supported: use -store file"),
                      (("-encrypt",), "--encrypt needs --encryption_key"),
                      (("-ft_group", "g", "-p", "-1"), "--ft_group needs -ns")):
        out = cli(*argv)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith("stanfleet: ") and why in out.stderr


def test_nothing_heavy_is_imported_on_the_way_to_spawning_nats_server():
    # Start time (issue 13): nats-py, asyncio and protobuf (~100 ms of CPU
    # together) load in startup's importer thread while nats-server starts;
    # a module on the main thread's way that imports one of them at the top
    # (families.py once did, through options.py) puts them back in series.
    code = ("import sys; import stanfleet.cli, stanfleet.streaming.main, "
            "stanfleet.streaming.startup, stanfleet.streaming.embedded, stanfleet.streaming.early; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'nats', 'aiohttp', 'asyncio', 'google', 'uvloop'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_log_file_pid_file_signal_and_explained_flags(tmp_path):
    log, pid = tmp_path / "server.log", tmp_path / "server.pid"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        EXE, "streaming-server", "-a", "127.0.0.1", "-p", str(port), "-log", str(log),
        "-P", str(pid), "--file_slice_max_msgs", "10", "-T=false", "-SD")  # -SD: connects

    async def ready():
        return log.exists() and "streaming server ready" in log.read_text()
    try:
        await eventually(ready, timeout=30)  # a log file offers no event
        assert pid.read_text() == str(proc.pid)
        text = log.read_text()
        assert "--file_slice_max_msgs: not applicable: JetStream manages files" in text
        assert "INFO stanfleet.streaming: streaming server ready" in text  # -T=false: no time
        # reload (SIGHUP) and reopen (SIGUSR1) keep it running; reopen starts
        # the log file afresh, as logrotate expects
        assert cli("-sl", "reload", "-P", str(pid)).returncode == 0
        log.rename(tmp_path / "server.log.1")
        assert cli("-sl", f"reopen={proc.pid}").returncode == 0
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "test-cluster", "logged")
        assert (await c.connect()).error == ""
        await c.close()

        async def reopened():
            return log.exists() and "client=logged connected" in log.read_text()
        await eventually(reopened)
        assert proc.returncode is None
        assert cli("-sl", "quit", "-P", str(pid)).returncode == 0
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert not pid.exists()
        assert "shutting down" in log.read_text()
        assert "--file_slice_max_msgs" not in log.read_text()  # that went to the old file
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_default_store_is_memory_a_clean_server_each_run(tmp_path):
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    for run in range(2):
        proc = await ServerProcess("-a", "127.0.0.1", "-p", str(port), cwd=str(tmp_path)).start()
        try:
            assert any("store=memory" in line for line in proc.lines)
            c = await RawStan.open(url, "test-cluster", f"run{run}")
            assert (await c.connect()).error == ""
            ack = await c.publish("runs", b"%d" % run)
            sub = await c.subscribe("runs", "in.runs", start_position=pb.First)
            first = await sub.next()
            assert (first.sequence, first.data) == (1, b"%d" % run)  # nothing of run 0
            assert ack.error == ""
            await c.close()
        finally:
            await proc.stop()
    assert os.listdir(tmp_path) == []  # no ./stanfleet-data: nothing written


async def test_go_configuration_file_sets_port_cluster_and_limits(tmp_path):
    port = free_port()
    conf = tmp_path / "stan.conf"
    conf.write_text(f"""
listen: 127.0.0.1:{port}
streaming {{
  cluster_id: fromconf
  store_limits {{
    max_channels: 2
    channels {{ "capped.*": {{ max_msgs: 2 }} }}
  }}
}}
""")
    proc = await ServerProcess("-sc", str(conf), "-mc", "3").start()  # the flag beats the file
    try:
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "fromconf", "conf")
        assert (await c.connect()).error == ""
        for i in range(3):
            assert (await c.publish("capped.a", b"%d" % i)).error == ""
        sub = await c.subscribe("capped.a", "in.capped", start_position=pb.First)
        assert [(await sub.next()).sequence for _ in range(2)] == [2, 3]  # max_msgs 2
        assert (await c.publish("b", b"x")).error == ""
        assert (await c.publish("c", b"x")).error == ""
        assert (await c.publish("d", b"x")).error == "too many channels"  # -mc 3
        await c.close()
    finally:
        await proc.stop()


async def test_nats_monitoring_endpoints_on_the_streaming_monitor_port():
    port = free_port()
    proc = await ServerProcess("-a", "127.0.0.1", "-p", str(port), "-m", "0").start()
    try:
        m = monitor_port(proc)
        varz = await get_json(m, "/varz")
        assert varz["port"] == port and varz["server_id"]
        subsz = await get_json(m, "/subsz")
        assert subsz["num_subscriptions"] >= 7  # what harnesses wait for
        connz = await get_json(m, "/connz?subs=1")
        # The request subjects are on a connection of their own when the
        # early layer's became it (early.py), on the nats-py one otherwise.
        ours = [c for c in connz["connections"] if c.get("name") == "_STAN-test-cluster"]
        requests = [c for c in connz["connections"]
                    if c.get("name") == "_STAN-test-cluster-requests"]
        assert ours and requests
        assert "_STAN.discover.test-cluster" in requests[0]["subscriptions_list"]
        # nats-py loads without importlib.metadata at start (startup.py) and
        # still names its own version in CONNECT.
        assert ours[0]["lang"] == "python3"
        assert ours[0]["version"] == metadata.version("nats-py")
        assert (await get_json(m, "/healthz")) == {"status": "ok"}
        assert "routes" in await get_json(m, "/routez")
        assert "accounts" in await get_json(m, "/accountz")
        assert "config" in await get_json(m, "/jsz") or "memory" in await get_json(m, "/jsz")
        assert (await get_json(m, "/streaming/serverz"))["cluster_id"] == "test-cluster"
    finally:
        await proc.stop()


async def test_a_plain_nats_cluster_from_cluster_and_routes():
    ports = [free_port() for _ in range(4)]
    seed = ServerProcess("-a", "127.0.0.1", "-p", str(ports[0]), "-cid", "other",
                         "--cluster", f"nats://127.0.0.1:{ports[1]}")
    member = ServerProcess("-a", "127.0.0.1", "-p", str(ports[2]), "-cid", "other",
                           "--cluster", f"nats://127.0.0.1:{ports[3]}",
                           "--routes", f"nats://127.0.0.1:{ports[1]}")
    await seed.start()
    try:
        await member.start()
        a = await nats.connect(f"nats://127.0.0.1:{ports[0]}")
        b = await nats.connect(f"nats://127.0.0.1:{ports[2]}")
        sub = await b.subscribe("across")
        await b.flush()

        async def delivered():  # until the route carries b's interest to a
            await a.publish("across", b"hi")
            try:
                return (await sub.next_msg(timeout=0.2)).data == b"hi"
            except nats.errors.TimeoutError:
                return False
        await eventually(delivered, timeout=20)
        await a.close()
        await b.close()
        assert member.proc.returncode is None and seed.proc.returncode is None
        assert await member.terminate() == 0
    finally:
        await member.stop()
        await seed.stop()


async def test_sigkill_then_restart_on_the_same_port_and_directory(tmp_path):
    port = free_port()
    args = ("-a", "127.0.0.1", "-p", str(port), "-store", "file", "-dir", str(tmp_path / "d"))
    proc = await ServerProcess(*args).start()
    try:
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "test-cluster", "k")
        assert (await c.connect()).error == ""
        assert (await c.publish("kept", b"1")).error == ""
        await c.vanish()
        proc.proc.send_signal(signal.SIGKILL)
        await proc.proc.wait()
        await proc.start()  # at once: the killed one's nats-server may still be going
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "test-cluster", "k2")
        assert (await c.connect()).error == ""
        sub = await c.subscribe("kept", "in.kept", start_position=pb.First)
        assert (await sub.next()).data == b"1"
        await c.close()
    finally:
        await proc.stop()


async def test_encryption_at_rest(tmp_path):
    port = free_port()
    data = tmp_path / "d"
    proc = await ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "file",
                               "-dir", str(data), "--encrypt",
                               "--encryption_key", "0123456789abcdef0123456789abcdef").start()
    try:
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "test-cluster", "enc")
        assert (await c.connect()).error == ""
        assert (await c.publish("secret", b"PLAINTEXT-MARKER-0042")).error == ""
        sub = await c.subscribe("secret", "in.secret", start_position=pb.First)
        assert (await sub.next()).data == b"PLAINTEXT-MARKER-0042"
        await c.close()
    finally:
        await proc.stop()
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and not any(b"PLAINTEXT-MARKER-0042" in p.read_bytes() for p in files)


async def test_nats_monitoring_forwarded_to_an_external_nats(tmp_path):
    from stanfleet.broker import Broker, BrokerConfig
    from stanfleet.streaming import ServerOptions, StreamingServer

    with Broker(BrokerConfig(store_dir=str(tmp_path / "js"), monitor_port=-1)) as b:
        server = StreamingServer(ServerOptions(
            nats_url=b.url, monitor_port=0, host="127.0.0.1",
            nats_monitor_url=f"http://127.0.0.1:{b.monitor_port}"))
        await server.start()
        try:
            varz = await get_json(server.monitor_port, "/varz?foo=1")
            assert varz["port"] == b.port
            connz = await get_json(server.monitor_port, "/connz")
            assert any(c.get("name") == "_STAN-test-cluster" for c in connz["connections"])
        finally:
            await server.stop()


async def test_a_connect_before_the_server_is_ready_is_held_and_answered():
    """nats-server opens the port before the streaming side is ready (Go's does
    too, and answers "no responders" meanwhile). Ours holds discover requests
    from the moment nats-server is up and answers them once ready."""
    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-SD")
    exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
    proc.proc = await asyncio.create_subprocess_exec(
        exe, "streaming-server", *proc.args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    lines = []
    up = asyncio.Event()

    async def read():
        while raw := await proc.proc.stdout.readline():
            lines.append(raw.decode(errors="replace"))
            if "embedded nats-server listening" in lines[-1]:
                up.set()
    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(up.wait(), 30)
        c = await RawStan.open(f"nats://127.0.0.1:{port}", "test-cluster", "eager")
        was_ready = any("streaming server ready" in x for x in lines)
        assert (await c.connect()).error == ""
        assert (await c.publish("eager", b"1")).error == ""
        await c.close()
        assert was_ready or any("that came before we were ready" in x for x in lines)
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        await proc.proc.wait()
        await reader
