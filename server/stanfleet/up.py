"""`stanfleet up`: the demo fleet in one command.

Starts, in this process, the streaming server with its embedded nats-server,
the listener, the release manager's artifact server and the fleet dashboard
(its URL is in the banner), then N simulated
devices (MicroPython unix port, one process each), and shows a live table:
device, last reading and its time, firmware version, connection state.
Ctrl-C stops everything, devices first, and leaves no process behind.

Secure by default (docs/security-design.md): the first run creates a CA and
server certificate, credentials for every service role and every simulated
device under <data-dir>/security/, and later runs reuse them. NATS takes TLS
and passwords only, with authorization on; the artifact server is HTTPS with
the same CA. `--insecure` runs everything in plaintext, without credentials.

Long because it is the demo's one assembly point: security, broker, server,
listener, artifacts, dashboard, simulator and the live table are each a few
lines here; what they do lives in their own packages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import sys
from pathlib import Path

from .dashboard.service import Dashboard, DashboardConfig
from .defaults import DEVICE_CHANNEL_FAMILIES
from .security.roles import ROLES
from .services import device_status
from .services.artifacts import ArtifactServer
from .services.connection import open_session, secure_options
from .services.listener import Listener, ListenerConfig
from .services.readings_db import ReadingsDB
from .services.registry import follow_channels
from .services.rejections import RejectLog, rejection
from .signals import stop_event
from .streaming import ServerOptions, StreamingServer

log = logging.getLogger("stanfleet.up")
REFRESH = 1.0  # seconds between redraws of the live table
CERT_HOSTS = ["localhost", "127.0.0.1"]  # up listens on 127.0.0.1 only
PRIVATE_UMASK = 0o077


class FleetFailed(RuntimeError):
    """A part of the fleet (listener, status table) stopped by itself; the cause is chained."""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=5, help="simulated devices (default: 5)")
    p.add_argument("--data-dir", default="stanfleet-data",
                   help="where broker data, database, releases and device flash live")
    p.add_argument("--port", type=int, default=4222, help="NATS client port (default: 4222)")
    p.add_argument("--artifact-port", type=int, default=8080,
                   help="artifact server port (default: 8080)")
    p.add_argument("--dashboard-port", type=int, default=8443,
                   help="fleet dashboard port, HTTPS unless --insecure (default: 8443; 0: any "
                        "free port; -1: no dashboard)")
    p.add_argument("--no-sim", action="store_true", help="backend only, no simulated devices")
    p.add_argument("--cluster-id", default="test-cluster")
    p.add_argument("--plain", action="store_true",
                   help="log lines instead of the live table (also when not on a terminal)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext NATS and HTTP without credentials (development only)")


def make_private(root: str) -> int:
    """Take group and other permissions off everything under root (left by
    an older version, or a copy); returns how many needed it."""
    changed = 0
    for path in [root] + [os.path.join(d, n) for d, dirs, files in os.walk(root)
                          for n in dirs + files]:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
            changed += 1
    return changed


class Security:
    """<data-dir>/security: the CA, and credentials for the services up runs
    and for each simulated device; made on the first run, reused after."""

    def __init__(self, directory: str, cluster_id: str):
        from .security.certs import CertPaths
        from .security.creds import Store

        self.dir = directory
        # Private, also when an older version or `certs init` made it 0755.
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.store = Store(directory, cluster_id=cluster_id)
        self.certs = CertPaths(self.store.certs_dir)

    def ensure(self, device_ids: list[str]) -> None:
        """Create what is missing. A revoked device or role stays revoked."""
        from .security.certs import init

        if not os.path.exists(self.certs.ca_key):
            init(self.certs.directory, CERT_HOSTS)
        if not self.signing_key.exists():
            # Devices then install only releases signed with it; `release build`
            # finds it here (stanfleet-data/security) and signs.
            from .security.signing import keygen

            keygen(self.dir)
        self.store.server_login()
        have, revoked = self.store.users(), self.store.revoked()
        for role in ROLES:
            if role not in have and role not in revoked:
                self.store.add_service(role)
        # In one go: one at a time rewrote the registry and reloaded the broker
        # per device.
        missing = [d for d in device_ids if f"device-{d}" not in have and
                   f"device-{d}" not in revoked]
        if missing:
            self.store.add_devices(missing)

    def service_creds(self, role: str) -> str:
        return self.store.path("services", f"{role}.json")

    def service_options(self, role: str) -> dict:
        """nats.connect options for a service role: TLS with our CA, its user."""
        return secure_options(self.service_creds(role), self.certs.ca)

    def device_config(self, device_id: str) -> dict:
        """config.json keys with the device's credentials; none for a revoked
        device, which keeps what it has (and is refused)."""
        try:
            with open(self.store.path("devices", f"device-{device_id}.json")) as f:
                creds = json.load(f)
        except FileNotFoundError:
            return {}
        cfg = {k: creds[k] for k in ("user", "password", "inbox_prefix") if k in creds}
        cfg["release_key"] = self.release_key
        return cfg

    @property
    def signing_key(self) -> Path:
        from .security.signing import PRIVATE_NAME

        return Path(self.dir) / PRIVATE_NAME

    @property
    def release_key(self) -> str:
        """The public half, hex: what devices check releases against."""
        from .security.signing import PUBLIC_NAME, read_public_key

        return read_public_key(Path(self.dir) / PUBLIC_NAME)

    def ca_der(self) -> bytes:
        with open(self.certs.ca_der, "rb") as f:
            return f.read()

    def server_options(self, cluster_id: str, port: int, data_dir: str) -> ServerOptions:
        """The streaming server as `streaming-server --security-dir` runs it."""
        from .streaming.options import add_arguments, from_args

        p = argparse.ArgumentParser()
        add_arguments(p)
        return from_args(p.parse_args(["--security-dir", self.dir, "-cid", cluster_id,
                                       "-a", "127.0.0.1", "-p", str(port), "-store", "file",
                                       "-dir", data_dir,
                                       "--channel_families", ",".join(DEVICE_CHANNEL_FAMILIES)]))

    def ssl_context(self):
        from .security.certs import server_context

        return server_context(self.certs)


class Fleet:
    """Everything `up` runs, startable and stoppable as one."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.data = os.path.abspath(args.data_dir)
        self.server: StreamingServer | None = None
        self.listener: Listener | None = None
        self.artifacts: ArtifactServer | None = None
        self.dashboard: Dashboard | None = None
        self.devices = None  # the simulator's fleet runner
        self.security: Security | None = None  # None: --insecure
        self._tasks: list[asyncio.Task] = []
        # Set by stop(): tasks end by themselves. Cancelling alone was not enough:
        # a cancel that lands while a STAN request completes can be lost (Python 3.11
        # wait_for), and the task then waited forever.
        self._stopping = asyncio.Event()
        self.status: dict[str, device_status.DeviceStatus] = {}  # device -> its last status

    async def start(self) -> None:
        a = self.args
        os.makedirs(os.path.join(self.data, "releases"), exist_ok=True)
        opened = await asyncio.to_thread(make_private, self.data)
        if opened:
            log.warning("%d files and directories under %s were readable by others; "
                        "now private", opened, self.data)
        port = a.port if a.port > 0 else -1  # -1: nats-server picks a free port
        broker_dir = os.path.join(self.data, "broker")
        if a.insecure:
            opts = ServerOptions(cluster_id=a.cluster_id, host="127.0.0.1", port=port,
                                 data_dir=broker_dir,
                                 channel_families=list(DEVICE_CHANNEL_FAMILIES))
        else:
            self.security = Security(os.path.join(self.data, "security"), a.cluster_id)
            await asyncio.to_thread(self.security.ensure, self.device_ids)
            opts = self.security.server_options(a.cluster_id, port, broker_dir)
        self.server = StreamingServer(opts)
        await self.server.start()
        url = self.server.nats_url
        self.listener = Listener(ListenerConfig(nats_url=url, cluster_id=a.cluster_id,
                                                name="up", db_path=self.db_path,
                                                nats_options=self.service_options("listener")))
        self._tasks.append(asyncio.create_task(self.listener.run(), name="listener"))
        await asyncio.wait_for(self.listener.ready.wait(), 30)
        self.artifacts = ArtifactServer(
            os.path.join(self.data, "releases"), "127.0.0.1", a.artifact_port,
            ssl_context=None if self.security is None else self.security.ssl_context())
        await self.artifacts.start()
        self._tasks.append(asyncio.create_task(self._follow_status(url), name="status table"))
        await self._start_dashboard(url)
        if self.device_ids:
            from .fleet.runner import FleetRunner  # the simulator needs the MicroPython unix port

            sec = self.security
            self.devices = FleetRunner(nats_url=url, cluster_id=a.cluster_id,
                                       data_dir=self.data, ids=self.device_ids,
                                       releases_dir=os.path.join(self.data, "releases"),
                                       credentials=None if sec is None else sec.device_config,
                                       ca_der=None if sec is None else sec.ca_der(),
                                       server_hostname=None if sec is None else "127.0.0.1")
            await self.devices.start()

    async def _start_dashboard(self, url: str) -> None:
        port = getattr(self.args, "dashboard_port", -1)  # absent: a caller without a dashboard
        if port is None or port < 0:
            return
        self.dashboard = Dashboard(DashboardConfig(
            nats=url, cluster_id=self.args.cluster_id,
            security_dir=None if self.security is None else self.security.dir,
            db=self.db_path, releases=os.path.join(self.data, "releases"),
            devices_dir=os.path.join(self.data, "devices"), url_base=self.artifacts_url,
            host="127.0.0.1", port=port),
            connected=lambda: set(self.server.clients.clients) if self.server else set())
        await self.dashboard.start()

    @property
    def device_ids(self) -> list[str]:
        a = self.args
        if a.no_sim or a.devices <= 0:
            return []
        from .fleet.runner import device_ids

        return device_ids(a.devices)

    def service_options(self, role: str) -> dict:
        return {} if self.security is None else self.security.service_options(role)

    @property
    def artifacts_url(self) -> str:
        scheme = "http" if self.security is None else "https"
        return f"{scheme}://127.0.0.1:{self.artifacts.port}"

    def banner(self) -> list[str]:
        """How to reach the fleet: the URLs, and the flags a command needs."""
        url = self.server.nats_url
        lines = [f"nats {url}, artifacts {self.artifacts_url}/releases/, "
                 f"{len(self.device_ids)} devices"]
        if self.dashboard is not None:
            login = "" if self.security is None else (
                f" (log in as operator or listener: passwords in "
                f"{self.security.service_creds('ROLE')})")
            lines.append(f"dashboard {self.dashboard.url}{login}")
        if self.security is None:
            lines.append("INSECURE: plaintext, no credentials (--insecure)")
            lines.append(f"commands: --nats {url}")
        else:
            sec = self.security
            lines.append(f"TLS and passwords on; security dir {sec.dir}")
            lines.append(f"commands: --nats {url} --ca {sec.certs.ca} "
                         f"--creds {sec.service_creds('ROLE')}")
            lines.append(f"  e.g. stanfleet config set {self.device_ids[0] if self.device_ids else 'ID'}"
                         f" sending_frequency=5 --new --nats {url} --ca {sec.certs.ca} "
                         f"--creds {sec.service_creds('config-manager')}")
        return lines

    @property
    def db_path(self) -> str:
        return os.path.join(self.data, "fleet.db")

    async def stop(self) -> None:
        self._stopping.set()
        if self.devices is not None:
            await self.devices.stop()
        if self.dashboard is not None:
            await self.dashboard.stop()
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

    def check(self) -> None:
        """Raise FleetFailed if one of up's tasks ended by itself: a part that
        stopped must stop the whole, loudly, not leave a table that lies."""
        for t in self._tasks:
            if t.done() and not self._stopping.is_set():
                cause = None if t.cancelled() else t.exception()
                raise FleetFailed(f"{t.get_name()} stopped") from cause

    async def _follow_status(self, url: str) -> None:
        """Keep the latest status of every device, discovered through the registry."""
        sc, nc = await open_session(url, self.args.cluster_id, "up-dashboard",
                                    **self.service_options("listener"))
        followed: set[str] = set()
        refused = RejectLog(log)

        async def on_status(m, device: str) -> None:
            st = device_status.from_bytes(m.data)
            if st.rejected:
                refused.record(rejection(device, m.seq, m.data, f"status: {st.rejected}"))
            self.status[device] = st

        async def follow(channel: str) -> None:
            device = device_status.device_of(channel)
            if device is None or channel in followed:
                return
            followed.add(channel)
            try:
                await sc.subscribe(channel, cb=lambda m, d=device: on_status(m, d),
                                   start_at="last_received")
            except BaseException:
                followed.discard(channel)  # tried again with the registry entry
                raise
        try:
            await follow_channels(sc, follow)
            await self._stopping.wait()
        finally:
            await sc.close()
            await nc.close()

    def rows(self) -> list[tuple]:
        """(device, last temp, its time, version, connection state) per known device."""
        db = ReadingsDB(self.db_path)
        try:
            latest = {d: db.latest(d) for d in db.devices()}
        finally:
            db.close()
        connected = set(self.server.clients.clients) if self.server else set()
        out = []
        for device in sorted(set(latest) | set(self.status)):
            _, ts, temp = latest.get(device) or (None, "-", None)
            st = self.status.get(device)
            version = "-" if st is None else "invalid" if st.rejected else st.version or "-"
            state = "online" if f"device-{device}" in connected else "offline"
            out.append((device, "-" if temp is None else f"{temp:.2f}", ts, version, state))
        return out


def render(rows: list[tuple], out, banner: list[str] = ()) -> None:
    out.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
    out.write("stanfleet up — Ctrl-C to stop\n")
    for line in banner:
        out.write(line + "\n")
    out.write("\n")
    out.write(f"{'device':<10} {'temp °C':>8}  {'reading time':<24}  {'version':<9} state\n")
    for device, temp, ts, version, state in rows:
        out.write(f"{device:<10} {temp:>8}  {ts:<24}  {version:<9} {state}\n")
    out.flush()


def run(args: argparse.Namespace) -> int:
    # Everything up writes (database, logs, broker store, credentials) is its
    # owner's alone: files 0600, directories 0700 (docs/security-design.md).
    os.umask(PRIVATE_UMASK)

    async def main() -> None:
        fleet = Fleet(args)
        stop = stop_event()
        try:
            await fleet.start()
            live = sys.stdout.isatty() and not args.plain
            banner = fleet.banner()
            if not live:
                print("fleet up: " + "\n  ".join(banner), flush=True)
            while not stop.is_set():
                fleet.check()
                if live:
                    render(fleet.rows(), sys.stdout, banner)
                try:
                    await asyncio.wait_for(stop.wait(), REFRESH)
                except asyncio.TimeoutError:
                    pass
        finally:
            await fleet.stop()
        print("fleet stopped", flush=True)

    asyncio.run(main())
    return 0

