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

The store is SQLite or PostgreSQL (readings_store.py). On stop, readings
already received are committed and acked before the session closes; any that
arrive after that are left unacked and the server redelivers them to another
instance of the group (or to this one when it is back) after ack_wait.

A task of the listener that fails for a reason it does not expect (a bug)
stops `run()` with ListenerFailed and the traceback, never a silent stall;
a restarted listener resumes from its durables.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..client import Client, Msg
from .connection import open_session
from .listener_metrics import ListenerMetrics
from .readings import InvalidReading, device_of, parse
from .readings_store import describe, open_store, retention_cutoff
from .registry import follow_channels
from .rejections import RejectLog, rejection

log = logging.getLogger("stanfleet.listener")

QUEUE = "listener"
BATCH_MAX = 500  # rows per transaction
ACK_WAIT = 30
MAX_INFLIGHT = 1024
DEFAULT_DRAIN_TIMEOUT = 10.0  # seconds to commit what was received when stopping
DEFAULT_RETENTION_INTERVAL = 3600.0  # seconds between retention sweeps
DEFAULT_DB_RETRY = 0.5  # first wait before retrying a failed commit; doubles up to the max
DEFAULT_DB_RETRY_MAX = 5.0


class ListenerFailed(RuntimeError):
    """A listener task died of an unexpected error; the cause is chained."""


@dataclass
class ListenerConfig:
    nats_url: str | list[str]  # one URL, or a cluster's
    cluster_id: str = "test-cluster"
    name: str = "1"  # instance name: clientID listener-<name>
    db_path: str = "stanfleet-data/fleet.db"  # a SQLite file or a postgresql:// URL
    nats_options: dict | None = None  # TLS, credentials: passed to nats.connect
    retention_days: float = 0  # drop readings older than this; 0 keeps them all
    retention_interval: float = DEFAULT_RETENTION_INTERVAL


class Listener:
    def __init__(self, config: ListenerConfig):
        self.config = config
        self.db = open_store(config.db_path)
        self.metrics = ListenerMetrics()
        self._draining = False
        self._idle = asyncio.Event()  # the writer has nothing in hand
        self._db_error = ""
        # Database calls block: run them all on one thread, off the event loop.
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
        sweeper = asyncio.create_task(self._retention(), name=f"{self.client_id}-retention")
        for task in (writer, sweeper):
            task.add_done_callback(self._on_task_end)
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
                if self._stop.is_set() and not writer.done():
                    await self._drain()  # a dead writer never drains: no use waiting
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
            sweeper.cancel()
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

    def not_ready(self) -> str:
        """"" while the listener can do its job, else why not (for /readyz)."""
        if not self.ready.is_set():
            return "no STAN session"
        return f"database: {self._db_error}" if self._db_error else ""

    async def _drain(self) -> None:
        """Commit and ack what was received; later deliveries go unacked (redelivered)."""
        self._draining = True
        try:
            await asyncio.wait_for(self._drained(), DEFAULT_DRAIN_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("stop: %d readings not committed in %.0fs, left for redelivery",
                        self._queue.qsize(), DEFAULT_DRAIN_TIMEOUT)

    async def _drained(self) -> None:
        # The writer sets _idle when it finds the queue empty, after acking its last batch.
        while True:
            await self._idle.wait()
            if self._queue.empty():
                return
            await asyncio.sleep(0)  # let the writer take what is queued

    async def _retention(self) -> None:
        """Sweep at start and then every retention_interval; retention_days may
        change meanwhile (SIGHUP). Several listeners sweeping is harmless."""
        while True:
            days = self.config.retention_days
            if days > 0:
                try:
                    gone = await self._db(self.db.delete_older_than, retention_cutoff(days))
                    self.metrics.retention_deleted.inc(gone)
                    if gone:
                        log.info("retention: %d readings older than %g days dropped", gone, days)
                except Exception as e:
                    log.error("retention sweep failed: %s", e)
            await asyncio.sleep(self.config.retention_interval)

    async def _commit(self, readings: list, rejects: list) -> bool:
        """Commit one batch, retrying while the database is away (a restart, a
        failover) so readings flow again as soon as it is back; False if the
        listener stops first. Meanwhile nothing is acked: if this outlasts
        ack_wait the server also redelivers, and the row key makes that harmless."""
        delay = DEFAULT_DB_RETRY
        while True:
            started = time.perf_counter()
            try:
                await self._db(self.db.commit_batch, readings, rejects)
                self._db_error = ""
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                return True
            except Exception as e:
                self._db_error = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.metrics.db_errors.inc()
                log.error("database write of %d rows failed, retrying in %.1fs: %s",
                          len(readings) + len(rejects), delay, self._db_error)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return False
            except asyncio.TimeoutError:
                delay = min(delay * 2, DEFAULT_DB_RETRY_MAX)

    async def _session(self) -> None:
        self._lost.clear()
        self._subscribed.clear()
        self._sc, self._nc = await open_session(
            self.config.nats_url, self.config.cluster_id, self.client_id,
            conn_lost_cb=lambda e: self._lost.set(), **(self.config.nats_options or {}))
        for device in await self._db(self.db.devices):
            await self._follow(device)
        await follow_channels(self._sc, self._on_channel,
                              durable_name=f"registry-{self.client_id}")
        log.info("listener %s serving (%d known devices) into %s", self.client_id,
                 len(self._subscribed), describe(self.config.db_path))
        self.ready.set()
        self.metrics.connected.set(1)
        await self._lost.wait()

    async def _teardown(self) -> None:
        self.ready.clear()
        self.metrics.connected.set(0)
        sc, nc, self._sc, self._nc = self._sc, self._nc, None, None
        if sc is not None:
            try:
                await sc.close()
            except Exception:
                pass
        if nc is not None and not nc.is_closed:
            await nc.close()

    async def _on_channel(self, channel: str) -> None:
        device = device_of(channel)
        if device is not None:  # else not a device's events channel
            await self._db(self.db.add_device, device)
            await self._follow(device)

    async def _follow(self, device: str) -> None:
        if device in self._subscribed:
            return
        self._subscribed.add(device)
        channel = f"devices.{device}.events"

        async def on_reading(msg: Msg) -> None:
            if self._draining:
                return  # unacked: redelivered after ack_wait
            await self._queue.put((device, msg))

        try:
            await self._sc.subscribe(channel, cb=on_reading, queue=QUEUE, durable_name=QUEUE,
                                     deliver_all_available=True, manual_acks=True,
                                     ack_wait=ACK_WAIT, max_inflight=MAX_INFLIGHT)
        except Exception:
            # Not followed: the registry entry is not acked either
            # (registry.follow_channels), and its redelivery must find the
            # device still to do (the subscribe timed out on a loaded server,
            # or fell into a streaming-server failover).
            self._subscribed.discard(device)
            raise
        self.metrics.devices.set(len(self._subscribed))
        log.info("device=%s following %s", device, channel)

    async def _writer(self) -> None:
        """Commit readings in batches, then ack them: never ack an uncommitted row."""
        while True:
            if self._queue.empty():
                self._idle.set()
            batch = [await self._queue.get()]
            self._idle.clear()
            while len(batch) < BATCH_MAX and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.metrics.queued.set(self._queue.qsize())
            readings, rejects = [], []
            for device, msg in batch:
                try:
                    r = parse(msg.data)
                    readings.append((device, msg.seq, r.ts, r.temp))
                except InvalidReading as e:
                    rej = rejection(device, msg.seq, msg.data, str(e))
                    self.reject_log.record(rej)
                    rejects.append((device, msg.seq, rej.sample, rej.reason))
            if not await self._commit(readings, rejects):
                continue  # stopping: not acked, the server redelivers after ack_wait
            self.saved += len(readings)
            self.rejected += len(rejects)
            self.metrics.saved.inc(len(readings))
            self.metrics.rejected.inc(len(rejects))
            for _, msg in batch:
                try:
                    await msg.ack()
                except Exception as e:  # session gone: redelivered, and the row key dedups
                    log.debug("ack of seq=%d not sent: %s", msg.seq, e)
