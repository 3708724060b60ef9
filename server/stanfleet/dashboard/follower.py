"""Feeding FleetState: device status from STAN, readings and desired config from the database.

Status: STAN has no wildcard subscriptions, so the follower reads the server's
channel registry (`stanfleet.channels`) and subscribes to each
`devices.<ID>.status` from its first message: the device page shows the whole
status history (config applied, OTA attempts and their reasons). It connects
with the listener role's credentials: the dashboard only reads here.

Readings and desired config: the listener and the configuration manager keep
them in the fleet database; one thread polls it every POLL seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ..services import device_status
from ..services.connection import open_session
from ..services.registry import follow_channels
from .fleetstate import FleetState
from .store import FleetDB

log = logging.getLogger("stanfleet.dashboard")
POLL = 1.0  # seconds between database reads


class StatusFollower:
    def __init__(self, state: FleetState, nats_url: str | list[str], cluster_id: str,
                 nats_options: dict, client_id: str = "dashboard"):
        self.state, self.url, self.cluster_id = state, nats_url, cluster_id
        self.options, self.client_id = nats_options, client_id
        self.ready = asyncio.Event()  # subscribed to the registry

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            lost = asyncio.Event()
            try:
                sc, nc = await open_session(self.url, self.cluster_id, self.client_id,
                                            conn_lost_cb=lambda e: lost.set(), **self.options)
            except Exception as e:  # broker not there yet, or restarting: try again
                log.warning("dashboard status session: %s; retrying in %.1fs", e, delay)
                await _wait(stop, delay)
                delay = min(delay * 2, 10)
                continue
            delay = 0.5
            try:
                await self._subscribe(sc)
                await _wait_any(stop, lost)
            finally:
                self.ready.clear()
                try:
                    await sc.close()
                except Exception:  # the session may be gone already
                    pass
                await nc.close()

    async def _subscribe(self, sc) -> None:
        followed: set[str] = set()

        async def follow(channel: str) -> None:
            device = device_status.device_of(channel)
            if device is None or channel in followed:
                return
            followed.add(channel)

            async def on_status(m, device=device) -> None:
                try:
                    status = device_status.parse(m.data)
                except device_status.InvalidStatus as e:
                    # The listener logs and counts rejections; the page shows the last good one.
                    log.debug("status of %s refused: %s", device, e)
                    return
                self.state.on_status(device, status, time.time())

            try:
                await sc.subscribe(channel, cb=on_status, deliver_all_available=True)
            except BaseException:
                followed.discard(channel)  # tried again with the registry entry
                raise

        await follow_channels(sc, follow)
        self.ready.set()


class DatabasePoller:
    """The newest reading per device and the desired config, every POLL seconds."""

    def __init__(self, state: FleetState, db_path: str):
        self.state, self.db_path = state, db_path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-db")
        self._db: FleetDB | None = None
        self.polled = asyncio.Event()  # set after the first complete poll

    def _read(self, known: list[str]):
        if self._db is None:
            self._db = FleetDB(self.db_path)
        devices = sorted(set(self._db.queries.devices()) | set(known))
        return self._db.queries.latest(devices), self._db.desired()

    async def poll_once(self) -> None:
        # The device list is copied here, on the loop: the state changes only there.
        latest, desired = await asyncio.get_running_loop().run_in_executor(
            self._thread, self._read, list(self.state.devices))
        self.state.on_readings(latest)
        self.state.on_desired(desired)
        self.state.tick()
        self.polled.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.poll_once()
                except Exception as e:  # a locked or missing database: next time
                    log.warning("dashboard database poll failed: %s", e)
                await _wait(stop, POLL)
        finally:
            if self._db is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
            self._thread.shutdown(wait=False)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _wait_any(*events: asyncio.Event) -> None:
    tasks = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
