"""A device's status message, parsed into a typed and validated value.

Devices report on `devices.<ID>.status` (firmware/app/device.py, `status()`):
`{"ts", "version", "slot", "image", "config", "cfg_errors", "buffer_dropped",
"buffered", "ota": {"state", "version", "reason"}, "mem_free"}`. Every reader
of it (up's live table, `config show`, `release status`) goes through here
instead of reading raw dicts: a device's bytes are hostile until parsed.

`parse` turns any bytes into a DeviceStatus or raises InvalidStatus, never
anything else. `from_bytes` never raises: a refused status becomes a
DeviceStatus whose `rejected` says why, for display next to the others.
Texts that reach a terminal are printable ASCII, cut to a bounded length:
a device cannot move the cursor or clear the screen of whoever reads them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .rejections import safe_text

MAX_STATUS_BYTES = 8192  # the firmware's status is about 300 bytes
MAX_CONFIG_KEYS = 32
MAX_CFG_ERRORS = 16
MAX_TEXT = 120  # characters of a free text (an OTA reason, a config error)
MAX_COUNT = 2**63 - 1
LABEL = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")  # versions, slots, image names
STATE = re.compile(r"^[a-z][a-z_ ]{0,23}$")  # an OTA state: idle, downloading, rolled_back ...
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")  # a config key
STATUS_CHANNEL = re.compile(r"^devices\.([A-Za-z0-9_-]+)\.status$")


class InvalidStatus(ValueError):
    """A status message that is not one; the message says why."""


@dataclass(frozen=True)
class OtaReport:
    state: str = "idle"
    version: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class DeviceStatus:
    ts: str = ""
    version: str | None = None
    slot: str | None = None
    image: str | None = None
    config: dict = field(default_factory=dict)  # key -> int | float | str | bool | None
    cfg_errors: tuple[str, ...] = ()
    buffer_dropped: int = 0
    buffered: int = 0
    ota: OtaReport = OtaReport()
    mem_free: int | None = None
    rejected: str = ""  # why the message was refused; "" for a valid status

    @classmethod
    def refused(cls, reason: str) -> "DeviceStatus":
        return cls(rejected=safe_text(reason, MAX_TEXT))


def device_of(channel: str) -> str | None:
    m = STATUS_CHANNEL.match(channel)
    return m.group(1) if m else None


def from_bytes(payload: bytes) -> DeviceStatus:
    try:
        return parse(payload)
    except InvalidStatus as e:
        return DeviceStatus.refused(str(e))


def parse(payload: bytes) -> DeviceStatus:
    if len(payload) > MAX_STATUS_BYTES:
        raise InvalidStatus(f"{len(payload)} bytes (a status is at most {MAX_STATUS_BYTES})")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidStatus("not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidStatus("not a JSON object")
    return DeviceStatus(
        ts=_text(doc.get("ts"), "ts", 40),
        version=_label(doc.get("version"), "version"),
        slot=_label(doc.get("slot"), "slot"),
        image=_label(doc.get("image"), "image"),
        config=_config(doc.get("config")),
        cfg_errors=_texts(doc.get("cfg_errors"), "cfg_errors"),
        buffer_dropped=_count(doc.get("buffer_dropped"), "buffer_dropped") or 0,
        buffered=_count(doc.get("buffered"), "buffered") or 0,
        ota=_ota(doc.get("ota")),
        mem_free=_count(doc.get("mem_free"), "mem_free"),
    )


def _label(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not LABEL.match(value):
        raise InvalidStatus(f"{name} is not a version label ({_kind(value)})")
    return value


def _text(value: object, name: str, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidStatus(f"{name} is not a string ({_kind(value)})")
    return safe_text(value, limit)


def _texts(value: object, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidStatus(f"{name} is not a list ({_kind(value)})")
    return tuple(_text(v, name) for v in value[:MAX_CFG_ERRORS])


def _count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidStatus(f"{name} is not a count ({_kind(value)})")
    return value


def _config(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidStatus(f"config is not an object ({_kind(value)})")
    if len(value) > MAX_CONFIG_KEYS:
        raise InvalidStatus(f"config has {len(value)} keys (at most {MAX_CONFIG_KEYS})")
    out = {}
    for key, v in value.items():
        if not KEY.match(key):
            raise InvalidStatus(f"config key {safe_text(key, 40)!r} is not a setting name")
        if isinstance(v, str):
            v = safe_text(v, 40)
        elif v is not None and not isinstance(v, (int, float, bool)):
            raise InvalidStatus(f"config {key} is not a single value ({_kind(v)})")
        out[key] = v
    return out


def _ota(value: object) -> OtaReport:
    if value is None:
        return OtaReport()
    if not isinstance(value, dict):
        raise InvalidStatus(f"ota is not an object ({_kind(value)})")
    state = value.get("state")
    if state is None:
        state = "idle"
    if not isinstance(state, str) or not STATE.match(state):
        raise InvalidStatus(f"ota state is not a state name ({_kind(state)})")
    return OtaReport(state, _label(value.get("version"), "ota version"),
                     _text(value.get("reason"), "ota reason"))


def _kind(value: object) -> str:
    """What a refused value is, without echoing it (it may be huge or unprintable)."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), "null")
