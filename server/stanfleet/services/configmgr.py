"""The configuration manager: sends cfg to devices, remembers what it asked for.

A setting is validated with the firmware's own rules (firmware/lib/cfgrules.py)
before anything is published, then sent on `devices.<ID>.cfg` and confirmed
by the server's PubAck. Devices hold a durable subscription there, so a device
that is offline gets it when it comes back. What a device has *applied* comes
from the last message on its status channel, `devices.<ID>.status`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from ..client import Client
from ..errors import CommandError
from ..fleet.firmware_code import load
from . import device_status
from .connection import DEFAULT_PUBLISH_ATTEMPTS, PUBLISH_ACK_WAIT
from .readings_store import is_postgres, open_store

STATUS_WAIT = 2.0  # seconds to wait for a device's last status message


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_settings(pairs: list[str]) -> dict:
    """`key=value` words to a validated dict; CommandError on the first bad one."""
    rules = load("cfgrules")
    settings = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"expected key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word is a string; the rules decide if that is allowed
        try:
            settings[key] = rules.check(key, value)
        except ValueError as e:
            raise CommandError(str(e)) from None
    if not settings:
        raise CommandError("nothing to set: give at least one key=value")
    return settings


class ConfigStore:
    """Desired config per device, in the fleet database (a SQLite file or a
    postgresql:// URL, the listener's: its devices table names the known devices)."""

    def __init__(self, url: str):
        # migrated: desired_config is there; a SQLite file is made 0600 (dbfile.py)
        self._store = open_store(url)
        self.conn = self._store.conn
        self._pg = is_postgres(url)

    def close(self) -> None:
        self._store.close()

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        return list(self.conn.execute(sql.replace("?", "%s") if self._pg else sql, args))

    def known_devices(self) -> list[str]:
        rows = self._rows(
            "SELECT device FROM devices UNION SELECT device FROM desired_config ORDER BY 1")
        return [r[0] for r in rows]

    def record(self, device: str, settings: dict) -> None:
        rows = [(device, k, json.dumps(v), now_iso()) for k, v in settings.items()]
        upsert = ("INSERT INTO desired_config VALUES (?, ?, ?, ?) ON CONFLICT (device, key) "
                  "DO UPDATE SET value = excluded.value, updated = excluded.updated")
        if self._pg:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany(upsert.replace("?", "%s"), rows)
        else:
            with self.conn:
                self.conn.executemany(upsert, rows)

    def desired(self, device: str) -> dict:
        rows = self._rows("SELECT key, value FROM desired_config WHERE device = ?", (device,))
        return {k: json.loads(v) for k, v in rows}


async def send(sc: Client, device: str, settings: dict) -> None:
    payload = json.dumps({"ts": now_iso(), **settings}).encode()
    # Raises unless the PubAck is clean.
    await sc.publish(f"devices.{device}.cfg", payload, ack_wait=PUBLISH_ACK_WAIT,
                     attempts=DEFAULT_PUBLISH_ATTEMPTS)


async def last_status(sc: Client, device: str,
                      wait: float = STATUS_WAIT) -> device_status.DeviceStatus | None:
    """The device's most recent status, parsed (`rejected` says why when it is
    not a valid one), or None if it never sent one."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def cb(msg):
        if not got.done():
            got.set_result(msg.data)

    sub = await sc.subscribe(f"devices.{device}.status", cb=cb, start_at="last_received")
    try:
        data = await asyncio.wait_for(got, wait)
    except asyncio.TimeoutError:
        return None
    finally:
        await sub.unsubscribe()
    return device_status.from_bytes(data)
