"""`stanfleet up`: the demo fleet in one command.

Starts, in this process, the streaming server with its embedded nats-server,
the listener and the release manager's artifact server, then N simulated
devices (MicroPython unix port, one process each), and shows a live table:
device, last reading and its time, firmware version, connection state.
Ctrl-C stops everything, devices first, and leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from .services.artifacts import ArtifactServer
from .services.connection import open_session
from .services.listener import Listener, ListenerConfig
from .services.readings_db import ReadingsDB
from .signals import stop_event
from .streaming import ServerOptions, StreamingServer

log = logging.getLogger("stanfleet.up")
REFRESH = 1.0  # seconds between redraws of the live table


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=5, help="simulated devices (default: 5)")
    p.add_argument("--data-dir", default="stanfleet-data",
                   help="where broker data, database, releases and device flash live")
    p.add_argument("--port", type=int, default=4222, help="NATS client port (default: 4222)")
    p.add_argument("--artifact-port", type=int, default=8080,
                   help="artifact server port (default: 8080)")
    p.add_argument("--no-sim", action="store_true", help="backend only, no simulated devices")
    p.add_argument("--cluster-id", default="test-cluster")
    p.add_argument("--plain", action="store_true",
                   help="log lines instead of the live table (also when not on a terminal)")


class Fleet:
    """Everything `up` runs, startable and stoppable as one."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.data = os.path.abspath(args.data_dir)
        self.server: StreamingServer | None = None
        self.listener: Listener | None = None
        self.artifacts: ArtifactServer | None = None
        self.devices = None  # the simulator's fleet runner
        self._tasks: list[asyncio.Task] = []
        self.status: dict[str, dict] = {}  # device -> last status message

    async def start(self) -> None:
        a = self.args
        os.makedirs(os.path.join(self.data, "releases"), exist_ok=True)
        self.server = StreamingServer(ServerOptions(
            cluster_id=a.cluster_id, host="127.0.0.1", port=a.port,
            data_dir=os.path.join(self.data, "broker")))
        await self.server.start()
        url = self.server.nats_url
        self.listener = Listener(ListenerConfig(nats_url=url, cluster_id=a.cluster_id,
                                                name="up", db_path=self.db_path))
        self._tasks.append(asyncio.create_task(self.listener.run()))
        await asyncio.wait_for(self.listener.ready.wait(), 30)
        self.artifacts = ArtifactServer(os.path.join(self.data, "releases"), "127.0.0.1",
                                        a.artifact_port)
        await self.artifacts.start()
        self._tasks.append(asyncio.create_task(self._follow_status(url)))
        if not a.no_sim and a.devices > 0:
            from .sim import FleetRunner  # the simulator needs the MicroPython unix port

            self.devices = FleetRunner(nats_url=url, cluster_id=a.cluster_id,
                                       data_dir=self.data, count=a.devices,
                                       releases_dir=os.path.join(self.data, "releases"))
            await self.devices.start()

    @property
    def db_path(self) -> str:
        return os.path.join(self.data, "fleet.db")

    async def stop(self) -> None:
        if self.devices is not None:
            await self.devices.stop()
        if self.listener is not None:
            await self.listener.stop()
            # Let it close its STAN session while the server is still up.
            await asyncio.wait([self._tasks[0]], timeout=10)
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.artifacts is not None:
            await self.artifacts.stop()
        if self.server is not None:
            await self.server.stop()

    async def _follow_status(self, url: str) -> None:
        """Keep the latest status of every device, discovered through the registry."""
        sc, nc = await open_session(url, self.args.cluster_id, "up-dashboard")
        followed: set[str] = set()

        async def on_channel(msg):
            channel = json.loads(msg.data).get("channel", "")
            parts = channel.split(".")
            if len(parts) == 3 and parts[0] == "devices" and parts[2] == "status" \
                    and channel not in followed:
                followed.add(channel)
                device = parts[1]

                async def on_status(m, device=device):
                    try:
                        self.status[device] = json.loads(m.data)
                    except ValueError:
                        pass
                await sc.subscribe(channel, cb=on_status, start_at="last_received")
        try:
            await sc.subscribe("stanfleet.channels", cb=on_channel, deliver_all_available=True)
            await asyncio.Event().wait()
        finally:
            await sc.close()
            await nc.close()

    def rows(self) -> list[tuple]:
        """(device, last temp, its time, version, connection state) per known device."""
        db = ReadingsDB(self.db_path)
        try:
            latest = {d: db.readings(d)[-1:] for d in db.devices()}
        finally:
            db.close()
        connected = set(self.server.clients.clients) if self.server else set()
        out = []
        for device in sorted(set(latest) | set(self.status)):
            last = latest.get(device) or [(None, "-", None)]
            _, ts, temp = last[0]
            version = self.status.get(device, {}).get("version", "-")
            state = "online" if f"device-{device}" in connected else "offline"
            out.append((device, "-" if temp is None else f"{temp:.2f}", ts, version, state))
        return out


def render(rows: list[tuple], out) -> None:
    out.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
    out.write("stanfleet up — Ctrl-C to stop\n\n")
    out.write(f"{'device':<10} {'temp °C':>8}  {'reading time':<24}  {'version':<9} state\n")
    for device, temp, ts, version, state in rows:
        out.write(f"{device:<10} {temp:>8}  {ts:<24}  {version:<9} {state}\n")
    out.flush()


def run(args: argparse.Namespace) -> int:
    async def main() -> None:
        fleet = Fleet(args)
        stop = stop_event()
        try:
            await fleet.start()
            live = sys.stdout.isatty() and not args.plain
            if not live:
                print(f"fleet up: nats {fleet.server.nats_url}, artifacts on port "
                      f"{fleet.artifacts.port}, {0 if args.no_sim else args.devices} devices",
                      flush=True)
            while not stop.is_set():
                if live:
                    render(fleet.rows(), sys.stdout)
                try:
                    await asyncio.wait_for(stop.wait(), REFRESH)
                except asyncio.TimeoutError:
                    pass
        finally:
            await fleet.stop()
        print("fleet stopped", flush=True)

    asyncio.run(main())
    return 0

