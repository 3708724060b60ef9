"""Client and subscription registrations, kept in JetStream KV.

Messages and subscription positions already live in JetStream (streams and
consumers). What remains is who is connected and which STAN subscription maps
to which consumer; keeping that in KV means a restarted server knows its
clients and resumes their deliveries without them reconnecting.

Writes happen before the server answers the request that caused them, so a
client never holds a registration the server could forget.
"""

from __future__ import annotations

import json
import logging

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

from .naming import escape

log = logging.getLogger("stanfleet.streaming.state")


class StateStore:
    def __init__(self, nc: NATS, cluster_id: str, *, storage: str, replicas: int):
        self.js = nc.jetstream()
        base = f"STAN_{escape(cluster_id)}"
        self.clients_bucket = f"{base}_clients"
        self.subs_bucket = f"{base}_subs"
        self.storage = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
        self.replicas = replicas
        self.clients = None
        self.subs = None

    async def open(self) -> None:
        self.clients = await self._bucket(self.clients_bucket, "STAN clients")
        self.subs = await self._bucket(self.subs_bucket, "STAN subscriptions")

    async def _bucket(self, name: str, description: str):
        try:
            return await self.js.key_value(name)
        except BucketNotFoundError:
            return await self.js.create_key_value(api.KeyValueConfig(
                bucket=name, description=description, history=1, storage=self.storage,
                replicas=self.replicas))

    async def save_client(self, client_id: str, record: dict) -> None:
        await self.clients.put(client_id, json.dumps(record).encode())

    async def delete_client(self, client_id: str) -> None:
        await _delete(self.clients, client_id)

    async def save_sub(self, sub_id: str, record: dict) -> None:
        await self.subs.put(sub_id, json.dumps(record).encode())

    async def delete_sub(self, sub_id: str) -> None:
        await _delete(self.subs, sub_id)

    async def load_clients(self) -> list[dict]:
        return await _load_all(self.clients)

    async def load_subs(self) -> list[dict]:
        return await _load_all(self.subs)


async def _delete(kv, key: str) -> None:
    try:
        # Purge rather than delete: no tombstones pile up for short-lived keys.
        await kv.purge(key)
    except KeyNotFoundError:
        pass


async def _load_all(kv) -> list[dict]:
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    records = []
    for key in keys:
        try:
            entry = await kv.get(key)
            records.append(json.loads(entry.value))
        except KeyNotFoundError:
            continue
        except ValueError:
            log.error("state key %s is not valid JSON; ignored", key)
    return records
