"""The listener: saves every device reading to the database.

Discovery: STAN has no wildcard subscriptions, so the listener holds a
durable subscription on the server's channel registry (`stanfleet.channels`,
where our streaming server announces each new channel) and subscribes to a
device's `devices.<ID>.events` as soon as it is announced. Devices it already
knows come from the database at start.

Each events subscription is a durable queue subscription (queue and durable
name "listener"), so several listener instances share the work and a
restarted listener continues where the group left off. A reading is acked
only after its row is committed; the row's key (device, sequence) makes a
redelivery harmless. Invalid payloads go to the rejects table (a bounded
sample, the reason, a count per device: services/rejections.py), are acked
and logged once per device per minute: nothing is silently dropped, and no
payload can come back after every restart.

A task of the listener that fails for a reason it does not expect (a bug)
stops `run()` with ListenerFailed and the traceback, never a silent stall;
a restarted listener resumes from its durables.
"""

from __future__ import annotations

import asyncio
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..client import Client, Msg
from .connection import open_session
from .readings import InvalidReading, device_of, parse
from .readings_db import ReadingsDB
from .registry import REGISTRY_CHANNEL, channel_of
from .rejections import RejectLog, rejection

log = logging.getLogger("stanfleet.listener")

QUEUE = "listener"
BATCH_MAX = 500  # rows per transaction
ACK_WAIT = 30
MAX_INFLIGHT = 1024


class ListenerFailed(RuntimeError):
    """A listener task died of an unexpected error; the cause is chained."""


@dataclass
class ListenerConfig:
    nats_url: str
    cluster_id: str = "test-cluster"
    name: str = "1"  # instance name: clientID listener-<name>
    db_path: str = "stanfleet-data/fleet.db"
    nats_options: dict | None = None  # TLS, credentials: passed to nats.connect


class Listener:
    def __init__(self, config: ListenerConfig):
        self.config = config
        self.db = ReadingsDB(config.db_path)
        # SQLite calls block: run them all on one thread, off the event loop.
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="listener-db")
        self.client_id = f"listener-{config.name}"
        self._queue: asyncio.Queue[tuple[str, Msg]] = asyncio.Queue()
        self._subscribed: set[str] = set()
        self._sc: Client | None = None
        self._nc = None
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self.saved = 0
        self.rejected = 0
        self.reject_log = RejectLog(log)
        self._failure: asyncio.Task | None = None  # the task that died, if one did
        self.ready = asyncio.Event()  # set once subscribed (for tests and `up`)

    async def run(self) -> None:
        """Serve until stop(); a lost session is re-established with backoff."""
        writer = asyncio.create_task(self._writer(), name=f"{self.client_id}-writer")
        writer.add_done_callback(self._on_task_end)
        delay = 0.5
        try:
            while not self._stop.is_set():
                try:
                    await self._session()
                    delay = 0.5
                except Exception as e:  # any failure of one session: start another
                    if self._stop.is_set():
                        break
                    log.warning("session failed: %s; retrying in %.1fs", e, delay)
                await self._teardown()
                if self._stop.is_set():
                    break
                try:
                    await asyncio.wait_for(self._stop.wait(), delay * (1 + random.random()))
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 10)
        finally:
            writer.cancel()
            await self._teardown()
            await self._db(self.db.close)
            self._db_thread.shutdown()
        if self._failure is not None:
            raise ListenerFailed(f"{self._failure.get_name()} stopped") \
                from self._failure.exception()

    def _on_task_end(self, task: asyncio.Task) -> None:
        """A task that ends by itself failed: stop serving (run() raises)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r; stopping", task.get_name(), task.exception())
            self._failure = task
            self._stop.set()
            self._lost.set()

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def stop(self) -> None:
        self._stop.set()
        self._lost.set()

    async def _session(self) -> None:
        self._lost.clear()
        self._subscribed.clear()
        self._sc, self._nc = await open_session(
            self.config.nats_url, self.config.cluster_id, self.client_id,
            conn_lost_cb=lambda e: self._lost.set(), **(self.config.nats_options or {}))
        for device in await self._db(self.db.devices):
            await self._follow(device)
        await self._sc.subscribe(REGISTRY_CHANNEL, cb=self._on_channel,
                                 durable_name=f"registry-{self.client_id}",
                                 deliver_all_available=True, manual_acks=True)
        log.info("listener %s serving (%d known devices)", self.client_id, len(self._subscribed))
        self.ready.set()
        await self._lost.wait()

    async def _teardown(self) -> None:
        self.ready.clear()
        sc, nc, self._sc, self._nc = self._sc, self._nc, None, None
        if sc is not None:
            try:
                await sc.close()
            except Exception:
                pass
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def _on_channel(self, msg: Msg) -> None:
        channel = channel_of(msg.data)
        device = device_of(channel) if channel else None
        if device is None:
            log.debug("registry entry seq=%d is no device's events channel", msg.seq)
        else:
            await self._db(self.db.add_device, device)
            await self._follow(device)
        await self._sc.ack(msg)

    async def _follow(self, device: str) -> None:
        if device in self._subscribed:
            return
        self._subscribed.add(device)
        channel = f"devices.{device}.events"

        async def on_reading(msg: Msg) -> None:
            await self._queue.put((device, msg))

        await self._sc.subscribe(channel, cb=on_reading, queue=QUEUE, durable_name=QUEUE,
                                 deliver_all_available=True, manual_acks=True,
                                 ack_wait=ACK_WAIT, max_inflight=MAX_INFLIGHT)
        log.info("device=%s following %s", device, channel)

    async def _writer(self) -> None:
        """Commit readings in batches, then ack them: never ack an uncommitted row."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            readings, rejects = [], []
            for device, msg in batch:
                try:
                    r = parse(msg.data)
                    readings.append((device, msg.seq, r.ts, r.temp))
                except InvalidReading as e:
                    rej = rejection(device, msg.seq, msg.data, str(e))
                    self.reject_log.record(rej)
                    rejects.append((device, msg.seq, rej.sample, rej.reason))
            try:
                await self._db(self.db.commit_batch, readings, rejects)
            except Exception as e:
                # Not acked: the server redelivers after ack_wait.
                log.error("database write failed, %d messages left unacked: %s", len(batch), e)
                continue
            self.saved += len(readings)
            self.rejected += len(rejects)
            for _, msg in batch:
                try:
                    await msg.ack()
                except Exception as e:  # session gone: redelivered, and the row key dedups
                    log.debug("ack of seq=%d not sent: %s", msg.seq, e)
