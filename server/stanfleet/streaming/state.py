"""Client and subscription registrations, kept in JetStream KV.

Messages and subscription positions already live in JetStream (streams and
consumers). What remains is who is connected and which STAN subscription maps
to which consumer; keeping that in KV means a restarted server knows its
clients and resumes their deliveries without them reconnecting.

Writes happen before the server answers the request that caused them, so a
client never holds a registration the server could forget.
"""

from __future__ import annotations

import asyncio
import json
import logging

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from . import buckets
from .jsapi import RetryingJSM
from .naming import state_buckets

log = logging.getLogger("stanfleet.streaming.state")

DEFAULT_LOAD_CONCURRENCY = 64  # registrations read at once at start-up (key by key)
DEFAULT_LOAD_QUIET = 2.0  # seconds without a registration before the rest are read alone
DEFAULT_DELETE_PATIENCE = 10.0  # seconds a registration's purge is retried (leader election)
DEFAULT_DELETE_FIRST_PAUSE = 0.1
DEFAULT_CREATE_TIMEOUT = 5.0  # seconds for JetStream to create a state bucket


class StateStore:
    def __init__(self, nc: NATS, cluster_id: str, *, storage: str, replicas: int):
        self.nc = nc
        self.cluster_id = cluster_id
        self.js = nc.jetstream()
        self.jsm = RetryingJSM(nc.jsm())
        self.clients_bucket, self.subs_bucket = state_buckets(cluster_id)
        self.storage = "file" if storage == "file" else "memory"
        self.replicas = replicas
        self.clients = None
        self.subs = None

    async def open(self) -> None:
        # Together: start-up time is round trips to JetStream.
        creates = buckets.create_requests(self.cluster_id, storage=self.storage,
                                          replicas=self.replicas)
        self.clients, self.subs = await asyncio.gather(
            self._bucket(self.clients_bucket, *creates[0]),
            self._bucket(self.subs_bucket, *creates[1]))

    async def _bucket(self, name: str, create_subject: str, create_payload: bytes):
        """The bucket, created first if missing: from buckets.py's config, the
        one the early layer creates it from (a first start), so they match."""
        try:
            return await self.js.key_value(name)
        except BucketNotFoundError:
            msg = await self.nc.request(create_subject, create_payload,
                                        timeout=DEFAULT_CREATE_TIMEOUT)
            error = json.loads(msg.data).get("error") if msg.data else None
            if error:
                APIError.from_error(error)
            return await self.js.key_value(name)

    async def save_client(self, client_id: str, record: dict) -> None:
        data = json.dumps(record).encode()
        if self.replicas > 1:
            # A replicated bucket has no leader for seconds after a NATS node
            # is lost; the connect waiting on this write is asked again by its
            # client meanwhile (as the same session) and answered once it lands.
            return await _patiently(lambda: self.clients.put(client_id, data),
                                    f"registration of {client_id}")
        await self.clients.put(client_id, data)

    async def delete_client(self, client_id: str) -> None:
        await _delete(self.clients, client_id)

    async def save_sub(self, sub_id: str, record: dict) -> None:
        await self.subs.put(sub_id, json.dumps(record).encode())

    async def delete_sub(self, sub_id: str) -> None:
        await _delete(self.subs, sub_id)

    async def load_clients(self) -> list[dict]:
        return await _load_all(self.js, self.jsm, self.clients_bucket)

    async def load_subs(self) -> list[dict]:
        return await _load_all(self.js, self.jsm, self.subs_bucket)


async def _delete(kv, key: str) -> None:
    """Purge rather than delete: no tombstones pile up for short-lived keys.

    While a NATS node is lost the bucket's stream may have no leader for a few
    seconds ("no response from stream"). A registration left behind would be
    restored at the next takeover as a live subscription of a clientID that
    has connected again (its durable then refused as a duplicate), so the
    purge is tried again until about DEFAULT_DELETE_PATIENCE has passed."""
    async def purge():
        try:
            await kv.purge(key)
        except KeyNotFoundError:
            pass
    await _patiently(purge, f"purge of {key}")


async def _patiently(op, what: str) -> None:
    """op(), tried again while the bucket has no leader, up to about
    DEFAULT_DELETE_PATIENCE (there is no event for an election's end)."""
    pause = DEFAULT_DELETE_FIRST_PAUSE
    deadline = asyncio.get_running_loop().time() + DEFAULT_DELETE_PATIENCE
    while True:
        try:
            return await op()
        except (NoStreamResponseError, ServiceUnavailableError, nats.errors.TimeoutError,
                asyncio.TimeoutError) as e:
            if asyncio.get_running_loop().time() + pause > deadline:
                raise
            log.debug("%s failed (%s); retrying", what, e)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


async def _load_all(js, jsm, bucket: str) -> list[dict]:
    """Every live value of a bucket.

    The keys come from the stream's subject listing rather than kv.keys():
    that one ends on a watcher's "no more pending" signal, which can come too
    early right after a restart and would make us forget registrations. The
    values then come in bulk, from an ordered consumer delivering the last
    message of each subject (one by one, 30,000 of a fleet's took 10 s of
    round trips); a key it did not bring within a quiet spell is looked up
    alone."""
    stream = f"KV_{bucket}"
    info = await jsm.stream_info(stream, subjects_filter=">")
    subjects = sorted(info.state.subjects or {})
    if not subjects:
        return []
    got = await _last_per_subject(js, stream, f"$KV.{bucket}.>", len(subjects))
    gate = asyncio.Semaphore(DEFAULT_LOAD_CONCURRENCY)

    async def last(subject: str):
        async with gate:
            try:
                return await jsm.get_last_msg(stream, subject)
            except NotFoundError:
                return None
    missing = [s for s in subjects if s not in got]
    for subject, msg in zip(missing, await asyncio.gather(*(last(s) for s in missing))):
        got[subject] = msg
    records = []
    for subject in subjects:
        msg = got[subject]
        if msg is None:
            continue
        if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
            continue
        try:
            records.append(json.loads(msg.data))
        except ValueError:
            log.error("state %s is not valid JSON; ignored", subject)
    return records


async def _last_per_subject(js, stream: str, subject: str, expected: int) -> dict:
    """subject -> its last message, as an ordered consumer brings them, until
    `expected` came or none came for DEFAULT_LOAD_QUIET seconds."""
    got = {}
    try:
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                                 pending_msgs_limit=1_000_000,
                                 pending_bytes_limit=512 * 1024 * 1024)
    except (nats.errors.Error, APIError) as e:
        log.warning("state of %s not read in bulk (%s); key by key", stream, e)
        return got
    try:
        while len(got) < expected:
            try:
                msg = await sub.next_msg(timeout=DEFAULT_LOAD_QUIET)
            except nats.errors.TimeoutError:
                break
            got[msg.subject] = msg
    finally:
        await sub.unsubscribe()
    return got
