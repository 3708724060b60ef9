"""Fault tolerance (`--ft_group NAME`): one active server per group, the rest on standby.

All instances of a group attach to the same JetStream. The active one holds a
lease: one key in the KV bucket `STAN_<cluster>_ft`, named after the group. It
renews the lease every `lease / 5` seconds with a compare-and-set on the
revision it wrote last. A standby reads the key every `lease / 8` seconds; once
it has seen the same revision unchanged for `lease` seconds (by its own clock),
it takes the lease with a compare-and-set on exactly that revision, so of two
standbys, or of a standby and a late renewal, only one can win.

Split-brain: the active serves only until `T + lease - guard`, where T is when
it *sent* its last renewal that succeeded. A standby cannot take over before
it has watched that renewal's revision for `lease` seconds, which starts after
T; so the old active has stopped serving `guard` seconds before anyone else
may start. "Serving" is checked on every incoming message (FencedConnection),
against a clock that also counts time spent suspended (CLOCK_BOOTTIME), so a
process that was frozen (SIGSTOP, a suspended host) drops everything it finds
buffered when it wakes, before any timer of its own has run. An active that cannot renew only pauses; when a renewal
succeeds again nobody took over meanwhile (the compare-and-set proves it), and
it resumes. An active whose renewal finds another holder has lost the lease
for good: it raises LeaseLost and the process exits.

Takeover after the active dies: at most `lease` plus one poll after its last
renewal, then loading the state (channels, clients, subscriptions) from
JetStream, as at a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.nuid import NUID

from .naming import escape

log = logging.getLogger("stanfleet.streaming.ft")

RENEWS_PER_LEASE = 5  # the active renews this many times per lease
POLLS_PER_LEASE = 8  # a standby reads the lease this many times per lease
GUARD_FRACTION = 1 / 3  # the active stops serving this much of a lease before it can lapse
DEFAULT_ACTIVATION_RETRY = 0.5  # seconds between attempts to load the state at takeover


def _now() -> float:
    """Seconds on a clock that never goes back and keeps counting while the host
    is suspended (Linux); elsewhere the monotonic clock."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class LeaseLost(Exception):
    """Another instance holds the lease this one held: this one must stop serving."""


class Lease:
    """The group's lease in JetStream KV: acquire (as a standby), renew (as the active)."""

    def __init__(self, nc: NATS, cluster_id: str, group: str, *, lease: float, storage: str,
                 replicas: int):
        self.js = nc.jetstream()
        self.bucket_name = f"STAN_{escape(cluster_id)}_ft"
        self.key = escape(group)
        self.group = group
        self.lease = lease
        self.guard = lease * GUARD_FRACTION
        self.storage = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
        self.replicas = replicas
        # Unique per process: a restarted instance is a new holder.
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{NUID().next().decode()}"
        self.kv = None
        self.revision = 0
        self.serving_until = 0.0  # on _now()
        self._was_serving = False  # for logging the moment serving stops

    def valid(self) -> bool:
        """True while this instance may serve: it holds the lease and it cannot have lapsed."""
        return _now() < self.serving_until

    async def open(self) -> None:
        try:
            self.kv = await self.js.key_value(self.bucket_name)
        except BucketNotFoundError:
            self.kv = await self.js.create_key_value(api.KeyValueConfig(
                bucket=self.bucket_name, description="STAN fault-tolerance leases", history=1,
                storage=self.storage, replicas=self.replicas))

    def _value(self) -> bytes:
        return json.dumps({"holder": self.holder, "renewed": time.time(),
                           "lease": self.lease}).encode()

    def _held_since(self, sent: float, revision: int) -> None:
        self.revision = revision
        self.serving_until = sent + self.lease - self.guard

    async def _read(self):
        """The current entry, or None when the key does not exist or was deleted."""
        try:
            return await asyncio.wait_for(self.kv.get(self.key), self.lease)
        except KeyNotFoundError:
            return None

    async def acquire(self) -> None:
        """Wait as a standby until this instance holds the lease."""
        poll = self.lease / POLLS_PER_LEASE
        seen_revision, seen_at = None, 0.0
        while True:
            try:
                entry = await self._read()
                now = _now()
                if entry is None:
                    if await self._take(0):
                        return
                elif entry.revision != seen_revision:
                    seen_revision, seen_at = entry.revision, now
                elif now - seen_at >= self.lease:
                    if await self._take(entry.revision):
                        return
            except (NatsError, asyncio.TimeoutError) as e:
                log.debug("ft group=%s: lease not readable: %s", self.group, e)
            await asyncio.sleep(poll)

    async def _take(self, revision: int) -> bool:
        """Compare-and-set on a revision that lapsed (or 0: the key is free)."""
        sent = _now()
        try:
            if revision == 0:
                new = await asyncio.wait_for(self.kv.create(self.key, self._value()), self.lease)
            else:
                new = await asyncio.wait_for(
                    self.kv.update(self.key, self._value(), last=revision), self.lease)
        except KeyWrongLastSequenceError:
            return False  # renewed, or taken by another standby, meanwhile
        self._held_since(sent, new)
        log.info("ft group=%s: lease acquired (revision %d)", self.group, new)
        return True

    async def keep(self) -> None:
        """Renew the lease until it is lost to another holder; then raise LeaseLost."""
        interval = self.lease / RENEWS_PER_LEASE
        failures = 0
        while True:
            await asyncio.sleep(interval)
            sent = _now()
            try:
                revision = await asyncio.wait_for(
                    self.kv.update(self.key, self._value(), last=self.revision), self.lease)
            except KeyWrongLastSequenceError:
                await self._check_still_ours()
                continue
            except (NatsError, asyncio.TimeoutError) as e:
                failures += 1
                # The first failure, and the moment serving stops: not every retry.
                serving = self.valid()
                if failures == 1 or (not serving and self._was_serving):
                    log.warning("ft group=%s: lease renewal failed (%s); %s", self.group,
                                e or type(e).__name__,
                                "still serving" if serving else "not serving until renewed")
                self._was_serving = serving
                continue
            if failures:
                log.info("ft group=%s: lease renewed after %d failures%s", self.group, failures,
                         "" if self.valid() else "; serving again")
            failures = 0
            self._held_since(sent, revision)
            self._was_serving = True

    async def _check_still_ours(self) -> None:
        """A renewal found another revision: a renewal of ours whose reply was lost,
        or another holder. Raises LeaseLost in the second case."""
        while True:
            try:
                entry = await self._read()
                break
            except (NatsError, asyncio.TimeoutError):
                await asyncio.sleep(self.lease / RENEWS_PER_LEASE)
        holder = _holder(entry)
        if holder == self.holder:
            # Ours, but we do not know when it was written: keep serving_until as
            # it is, the next renewal extends it.
            self.revision = entry.revision
            return
        self.serving_until = 0.0
        raise LeaseLost(f"ft group {self.group}: lease lost to {holder or 'nobody (deleted)'}; "
                        f"this server stops")

    async def release(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        if not self.revision:
            return
        self.serving_until = 0.0
        try:
            await asyncio.wait_for(self.kv.delete(self.key, last=self.revision), self.lease)
            log.info("ft group=%s: lease released", self.group)
        except (NatsError, asyncio.TimeoutError) as e:
            log.warning("ft group=%s: lease not released (%s); it lapses in %.1fs", self.group,
                        e, self.lease)
        self.revision = 0


def _holder(entry) -> str | None:
    if entry is None:
        return None
    try:
        return json.loads(entry.value).get("holder")
    except (ValueError, AttributeError):
        return None


class FencedConnection:
    """The NATS connection as the serving parts see it: every subscription
    callback runs only while the lease is valid, so nothing buffered is served
    by an instance that may no longer be the active one."""

    def __init__(self, nc: NATS, serving):
        self._nc = nc
        self._serving = serving

    def __getattr__(self, name):
        return getattr(self._nc, name)

    async def subscribe(self, subject: str, queue: str = "", cb=None, **kw):
        if cb is None:
            raise TypeError("a fenced subscription needs a callback")
        serving = self._serving

        async def fenced(msg):
            if serving():
                await cb(msg)
        return await self._nc.subscribe(subject, queue, cb=fenced, **kw)


class FaultTolerance:
    """Stand by until this instance holds the group's lease, then activate the
    server and keep the lease; `lost` completes with LeaseLost if it goes."""

    def __init__(self, lease: Lease, *, activate, deactivate,
                 activation_retry: float = DEFAULT_ACTIVATION_RETRY):
        self.lease = lease
        self._activate = activate  # async (nc) -> None: load the state, start serving
        self._deactivate = deactivate  # async () -> None: undo a failed activation
        self.activation_retry = activation_retry
        self.activated = False
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task | None = None

    @property
    def active(self) -> bool:
        return self.activated and self.lease.valid()

    def start(self, nc: NATS) -> None:
        self._task = asyncio.create_task(self._run(FencedConnection(nc, self.lease.valid)))

    async def _run(self, nc: FencedConnection) -> None:
        try:
            await self.lease.acquire()
            keeper = asyncio.create_task(self.lease.keep())
            try:
                await self._activate_until_done(nc, keeper)
                await keeper
            finally:
                keeper.cancel()
        except LeaseLost as e:
            self.activated = False
            log.error("%s", e)
            self.lost.set_exception(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: stop rather than stand by forever doing nothing
            log.exception("ft group=%s failed", self.lease.group)
            self.lost.set_exception(LeaseLost(f"ft group {self.lease.group}: {e}"))

    async def _activate_until_done(self, nc: FencedConnection, keeper: asyncio.Task) -> None:
        # Right after a NATS node is lost, JetStream may refuse requests while
        # it elects leaders: keep the lease and try again.
        while not keeper.done():
            try:
                await self._activate(nc)
                self.activated = True
                return
            except Exception as e:
                log.error("ft group=%s: taking over failed (%s); retrying", self.lease.group,
                          e or type(e).__name__)
                await self._deactivate()
                await asyncio.sleep(self.activation_retry)

    async def stop(self) -> None:
        """Stop standing by or renewing; give the lease up if this instance holds it."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not self.lost.done():
            await self.lease.release()
            self.lost.cancel()
