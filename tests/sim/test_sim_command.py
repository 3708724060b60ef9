"""`stanfleet sim` as a user runs it: against a secure streaming server, with the
devices' credentials taken from the security directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from tests.streaming.serverproc import ServerProcess, free_port

DEV = "5EC1"


def stanfleet(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "stanfleet.cli", *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_sim_command_runs_devices_against_a_secure_server(tmp_path, releases):
    sec = str(tmp_path / "sec")
    stanfleet("certs", "init", "--dir", os.path.join(sec, "certs"))
    stanfleet("creds", "--dir", sec, "add-device", DEV)
    port = free_port()
    server = await ServerProcess("--security-dir", sec, "-a", "127.0.0.1", "-p", str(port),
                                 "-dir", str(tmp_path / "broker")).start()
    data = tmp_path / "data"
    (data / "releases").mkdir(parents=True)
    (data / "releases" / "1.0.0.bin").symlink_to(releases / "1.0.0.bin")
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stanfleet.cli", "sim", "--ids", DEV, "--nats",
        f"tls://localhost:{port}", "--security-dir", sec, "--data-dir", str(data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    seen = []
    try:
        async def connected():
            while True:
                line = (await sim.stdout.readline()).decode()
                assert line, "stanfleet sim ended:\n" + "".join(seen)
                seen.append(line)
                if line.startswith(f"{DEV} stanfleet: connected client=device-{DEV}"):
                    return
        await asyncio.wait_for(connected(), 60)
        assert not any("password" in line for line in seen)  # never in the device's log
    finally:
        sim.send_signal(signal.SIGINT)
        await asyncio.wait_for(sim.communicate(), 30)
        await server.stop()
    assert sim.returncode == 0
