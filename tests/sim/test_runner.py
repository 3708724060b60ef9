"""The fleet runner (stanfleet.fleet.runner) with toy devices: tiny flash directories
whose main.py prints what the test waits for. Each device is a real
MicroPython unix-port process running sim/board.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.fleet.proxy import NetworkProxy, parse_upstreams
from stanfleet.fleet.runner import FleetRunner

NOWHERE = "nats://127.0.0.1:1"  # for devices that never use the network

# Counts boots in a file on the flash, as firmware keeps state across resets.
PRELUDE = """\
import machine, sys, time
try:
    with open("n") as f:
        n = int(f.read())
except OSError:
    n = 0
n += 1
with open("n", "w") as f:
    f.write(str(n))
print("boot", n, "cause", machine.reset_cause())
"""
FOREVER = """
print("settled")
while True:
    time.sleep(1)
"""

# A toy NATS client: connects to the URL in config.json (its proxy), pings
# every 0.2 s and prints each change of state: online, lost, stalled, resumed.
NATS_TOY = """\
import json, select, socket, time
cfg = json.load(open("config.json"))
host, port = cfg["nats"][0].split("://")[1].rsplit(":", 1)
addr = socket.getaddrinfo(host, int(port))[0][-1]
buf = b""

def readline(s, p, ms):
    global buf
    while b"\\n" not in buf:
        if not p.poll(ms):
            return None
        c = s.recv(512)
        if not c:
            raise OSError("eof")
        buf += c
    i = buf.index(b"\\n") + 1
    line, buf = buf[:i], buf[i:]
    return line

online = False
while True:
    buf = b""
    s = socket.socket()
    try:
        s.connect(addr)
        p = select.poll()
        p.register(s, select.POLLIN)
        if readline(s, p, 3000) is None:
            raise OSError("no INFO")
        s.send(b'CONNECT {"verbose":false}\\r\\n')
        stalled = False
        while True:
            s.send(b"PING\\r\\n")
            while True:
                line = readline(s, p, 300)
                if line is None:
                    if not stalled:
                        print("stalled")
                        stalled = True
                elif line.startswith(b"PONG"):
                    break
                elif line.startswith(b"PING"):
                    s.send(b"PONG\\r\\n")
            if stalled:
                print("resumed")
                stalled = False
            elif not online:
                print("online")
            online = True
            time.sleep(0.2)
    except OSError as e:
        if online:
            print("lost", e)
        online = False
    s.close()
    time.sleep(0.05)
"""


def toy(data: Path, device_id: str, main_py: str, boot_py: str | None = None) -> Path:
    flash = data / "devices" / device_id / "flash"
    flash.mkdir(parents=True)
    (flash / "main.py").write_text(main_py)
    if boot_py is not None:
        (flash / "boot.py").write_text(boot_py)
    return flash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_gone(pid: int, timeout: float = 10) -> None:
    """Return when process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
    try:
        await asyncio.wait_for(gone, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def make_runner(tmp_path):
    made = []

    async def make(*ids: str, nats_url: str = NOWHERE, **kw) -> FleetRunner:
        kw.setdefault("crash_pause", 0.05)
        r = FleetRunner(nats_url, data_dir=tmp_path / "data", ids=list(ids), **kw)
        made.append(r)
        await r.start()
        return r

    yield make
    for r in made:
        await r.stop()


async def test_reboot_restarts_at_once_and_logs(tmp_path, make_runner):
    toy(tmp_path / "data", "D1", PRELUDE + "if n < 3:\n    machine.reset()\n" + FOREVER,
        boot_py='print("boot.py ran")\n')
    seen = []
    r = await make_runner("D1", on_line=lambda d, line: seen.append((d, line)))
    await r.expect("D1", "settled")
    dev = r.devices["D1"]
    assert (dev.boots, dev.reboots, dev.crashes) == (3, 2, 0)
    # machine.reset_cause(): power-on first, then soft resets
    assert [line for d, line in seen if line.startswith("boot ")] == [
        "boot 1 cause 1", "boot 2 cause 5", "boot 3 cause 5"]
    assert seen.count(("D1", "boot.py ran")) == 3
    log = dev.log_path.read_text().splitlines()
    assert "boot 1 cause 1" in log and "[sim] reboot" in log and log[-1] == "settled"
    assert r.find("D1", "[sim] exit 75") is not None


async def test_crash_restarts_after_a_growing_capped_pause(tmp_path, make_runner):
    toy(tmp_path / "data", "D1", PRELUDE + """\
if n == 1:
    raise ValueError("boom")
if n < 4:
    sys.exit(3)
""" + FOREVER)
    r = await make_runner("D1", crash_pause=0.05, crash_pause_max=0.08)
    await r.expect("D1", "settled")
    dev = r.devices["D1"]
    assert (dev.boots, dev.crashes, dev.reboots) == (4, 3, 0)
    assert r.find("D1", "ValueError: boom") is not None  # the traceback is kept
    crashes = [line for _, line in dev.recent if line.startswith("[sim] crash")]
    assert crashes == ["[sim] crash: exit 1, restart in 0.05s",
                       "[sim] crash: exit 3, restart in 0.08s",
                       "[sim] crash: exit 3, restart in 0.08s"]
    assert r.find("D1", "boot 4 cause 3") is not None  # the watchdog's reset cause


async def test_power_cut_power_on_and_reset_button(tmp_path, make_runner):
    toy(tmp_path / "data", "D1", PRELUDE + FOREVER)
    toy(tmp_path / "data", "D2", PRELUDE + FOREVER)
    r = await make_runner("D1", "D2")
    await r.expect("D1", "settled")
    await r.expect("D2", "settled")
    dev = r.devices["D1"]
    pid = dev.pid
    await r.power_cut("D1")
    assert dev.proc is None and not dev.powered and not alive(pid)
    assert (dev.starts, dev.crashes) == (1, 0)  # no watchdog restart without power
    assert r.devices["D2"].running

    mark = r.mark("D1")
    await r.power_on("D1")
    await r.expect("D1", "boot 2 cause 1", since=mark)  # power-on reset

    mark = r.mark("D1")
    old = dev.pid
    await r.reboot("D1")
    assert not alive(old)
    await r.expect("D1", "boot 3 cause 2", since=mark)  # hard reset
    assert (dev.boots, dev.crashes, dev.reboots) == (3, 0, 0)


async def test_an_externally_killed_device_counts_as_a_crash(tmp_path, make_runner):
    toy(tmp_path / "data", "D1", PRELUDE + FOREVER)
    r = await make_runner("D1")
    await r.expect("D1", "settled")
    mark = r.mark("D1")
    os.kill(r.devices["D1"].pid, signal.SIGKILL)
    await r.expect("D1", "boot 2 cause 3", since=mark)
    assert r.devices["D1"].crashes == 1


async def test_network_cut_stall_and_broker_restart_through_the_proxy(tmp_path, make_runner):
    port = free_port()
    broker = Broker(BrokerConfig(port=port, jetstream=False, log_file=str(tmp_path / "nats.log")))
    broker.start()
    try:
        toy(tmp_path / "data", "D1", NATS_TOY)
        r = await make_runner("D1", nats_url=broker.url)
        dev = r.devices["D1"]
        cfg = json.loads((dev.flash_dir / "config.json").read_text())
        assert cfg["nats"] == [dev.proxy.url()] and cfg["device_id"] == "D1"
        await r.expect("D1", "online")

        # Cut: the link resets and reconnects are refused until restored.
        mark = r.mark("D1")
        await r.cut_network("D1")
        await r.expect("D1", "lost", since=mark)
        await r.wait_until(lambda: dev.proxy.refused >= 2, 10)
        assert r.find("D1", "online", since=mark) is None
        await r.restore_network("D1")
        await r.expect("D1", "online", since=mark)

        # Stall: nothing moves, nothing ends; what was sent arrives on restore.
        await r.wait_until(lambda: dev.proxy.connections == 1, 10)
        mark = r.mark("D1")
        await r.cut_network("D1", silent=True)
        await r.expect("D1", "stalled", since=mark)
        assert dev.proxy.connections == 1
        await r.restore_network("D1")
        await r.expect("D1", "resumed", since=mark)
        assert r.find("D1", "lost", since=mark) is None

        # The broker goes away and comes back on its port: the device gets back.
        mark = r.mark("D1")
        broker.stop()
        await r.expect("D1", "lost", since=mark)
        broker.start()
        await r.expect("D1", "online", since=mark)
    finally:
        broker.stop()


async def test_stop_leaves_no_process_and_is_idempotent(tmp_path):
    data = tmp_path / "data"
    for d in ("D1", "D2", "D3"):
        toy(data, d, PRELUDE + FOREVER)
    r = FleetRunner(NOWHERE, data_dir=data, ids=["D1", "D2", "D3"])
    await r.start()
    for d in r.devices:
        await r.expect(d, "settled")
    pids = [dev.pid for dev in r.devices.values()]
    ports = [dev.proxy.port for dev in r.devices.values()]
    await r.stop()
    assert not any(alive(p) for p in pids)
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    await r.stop()


async def test_existing_flash_gets_this_runs_proxy_and_keeps_its_settings(tmp_path):
    data = tmp_path / "data"
    flash = toy(data, "D1", 'import json, time\nprint("nats", json.load(open("config.json"))["nats"][0])\n'
                'while True:\n    time.sleep(1)\n')
    (flash / "config.json").write_text(json.dumps({"device_id": "D1", "nats": ["nats://old:1"],
                                                   "wifi": {"ssid": "lab"}}))
    urls = []
    for _ in range(2):
        async with FleetRunner(NOWHERE, "other-cluster", data, ids=["D1"],
                               credentials=lambda d: {"user": f"device-{d}", "password": "pw"},
                               ca_der=b"\x30\x00") as r:
            line = await r.expect("D1", "nats ")
            assert line == f"nats {r.devices['D1'].proxy.url()}"
            urls.append(line)
    cfg = json.loads((flash / "config.json").read_text())
    assert cfg["wifi"] == {"ssid": "lab"} and cfg["cluster_id"] == "other-cluster"
    assert (cfg["user"], cfg["password"], cfg["ca"]) == ("device-D1", "pw", "ca.der")
    assert (flash / "ca.der").read_bytes() == b"\x30\x00"
    assert urls[0] != urls[1]  # a new proxy port each run


async def test_new_device_is_provisioned_with_the_factory_bundle(tmp_path):
    pytest.importorskip("stanfleet.fleet.provision")
    data = tmp_path / "data"
    r = FleetRunner(NOWHERE, data_dir=data, count=2)
    try:
        await r.start()
        assert sorted(r.devices) == ["D0000001", "D0000002"]
        assert (data / "releases" / "1.0.0.bin").exists()
        for dev in r.devices.values():
            cfg = json.loads((dev.flash_dir / "config.json").read_text())
            assert cfg["nats"] == [dev.proxy.url()] and cfg["device_id"] == dev.id
            assert (dev.flash_dir / "main.py").exists()
    finally:
        await r.stop()


def test_parse_upstreams():
    assert parse_upstreams("nats://a:1,b:2") == ("nats", [("a", 1), ("b", 2)])
    assert parse_upstreams(["tls://h:4443", "tls://g"]) == ("tls", [("h", 4443), ("g", 4222)])
    with pytest.raises(ValueError):
        NetworkProxy([])


async def test_tls_devices_check_the_brokers_name(tmp_path):
    r = FleetRunner("tls://nats.example:4443", data_dir=tmp_path, ids=["D1"])
    assert r.server_hostname == "nats.example"


async def _read_until(proc, text: str, timeout: float = 30) -> list[str]:
    lines = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"exited before {text!r}:\n" + "\n".join(lines))
        lines.append(raw.decode().rstrip())
        if text in lines[-1]:
            return lines


async def _start_cli(data: Path) -> asyncio.subprocess.Process:
    exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
    return await asyncio.create_subprocess_exec(
        exe, "sim", "--devices", "1", "--nats", NOWHERE, "--data-dir", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_sim_command_prints_device_lines_and_stops_on_ctrl_c(tmp_path):
    toy(tmp_path, "D0000001", 'print("hello")\n' + FOREVER)
    proc = await _start_cli(tmp_path)
    lines = await _read_until(proc, "D0000001 hello")
    pid = int(next(x for x in lines if "[sim] boot 1 pid" in x).split("pid ")[1].split()[0])
    proc.send_signal(signal.SIGINT)
    rest = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    assert await proc.wait() == 0, rest
    assert "sim: stopped" in rest
    assert not alive(pid)
    assert "hello" in (tmp_path / "devices" / "D0000001" / "log").read_text()


async def test_devices_die_with_a_killed_runner(tmp_path):
    toy(tmp_path, "D0000001", 'print("hello")\n' + FOREVER)
    proc = await _start_cli(tmp_path)
    lines = await _read_until(proc, "D0000001 hello")
    pid = int(next(x for x in lines if "[sim] boot 1 pid" in x).split("pid ")[1].split()[0])
    proc.kill()
    await proc.wait()
    await wait_gone(pid)  # PR_SET_PDEATHSIG


async def test_proxy_close_ends_stalled_and_pending_links_quietly(caplog):
    async def echo(r, w):
        while data := await r.read(1024):
            w.write(data)
        w.close()
    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = NetworkProxy([("127.0.0.1", upstream.sockets[0].getsockname()[1])])
    await proxy.start()
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w1.write(b"ping\n")
        assert await r1.readline() == b"ping\n"
        proxy.cut(silent=True)
        w1.write(b"held\n")
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)  # waits for the link
        await proxy.close()
        assert await r1.read() == b"" and await r2.read() == b""
        assert proxy.connections == 0
    finally:
        upstream.close()
        await upstream.wait_closed()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
