"""What a valid temperature reading is, and how one is parsed.

Devices send `{"ts": "2026-11-25T10:00:00Z", "temp": 21.37}`. The seed's
devices sent the temperature as a string ("20.4"); a numeric string is
accepted, anything else is rejected with the reason.

The payload comes from a device and is hostile until parsed: `parse` turns
any bytes into a Reading or raises InvalidReading, never anything else (a
date that overflows when moved to UTC, an integer too large for a float, a
nesting deep enough to exhaust the recursion limit). The listener counts on
it: any other exception there is a bug, and stops the listener loudly.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass

# Beyond what a DS18B20 (-55..125 °C) or an ESP32's die sensor can report.
MIN_TEMP = -60.0
MAX_TEMP = 130.0
# A reading is about 50 bytes; anything much larger is not one, and is
# refused before the JSON parser spends time on it.
MAX_READING_BYTES = 1024
MAX_TEMP_TEXT = 32  # characters of a temperature sent as a string
EVENTS_CHANNEL = re.compile(r"^devices\.([A-Za-z0-9_-]+)\.events$")


class InvalidReading(ValueError):
    """A payload that is not a usable reading; the message says why."""


@dataclass(frozen=True)
class Reading:
    ts: str  # normalised ISO-8601 UTC, e.g. 2026-11-25T10:00:00.000Z
    temp: float


def device_of(channel: str) -> str | None:
    m = EVENTS_CHANNEL.match(channel)
    return m.group(1) if m else None


def parse_ts(text: object) -> dt.datetime:
    """An aware datetime in UTC, or InvalidReading."""
    if not isinstance(text, str):
        raise InvalidReading("ts is not a string")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidReading(f"ts {text[:40]!r} is not ISO-8601") from None
    if when.tzinfo is None:
        raise InvalidReading("ts has no timezone (expected UTC, e.g. ...Z)")
    try:
        # 0001-01-01T00:00+01:00 and 9999-12-31T23:00-05:00 are valid local
        # times whose UTC lies outside what datetime can hold.
        return when.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        raise InvalidReading(f"ts {text[:40]!r} is out of range in UTC") from None


def format_ts(when: dt.datetime) -> str:
    """UTC, milliseconds, a Z; the year always four digits, so text order is time order."""
    return when.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_temp(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidReading("temp is not a number")
    if isinstance(value, str) and len(value) > MAX_TEMP_TEXT:
        raise InvalidReading("temp is not a number (string too long)")
    try:
        temp = float(value)
    except ValueError:
        raise InvalidReading(f"temp {str(value)[:20]!r} is not a number") from None
    except OverflowError:  # an integer with hundreds of digits
        raise InvalidReading(f"temp is outside {MIN_TEMP}..{MAX_TEMP} °C") from None
    if not math.isfinite(temp) or not MIN_TEMP <= temp <= MAX_TEMP:
        raise InvalidReading(f"temp {temp} is outside {MIN_TEMP}..{MAX_TEMP} °C")
    return temp


def parse(payload: bytes) -> Reading:
    """A Reading from any bytes, or InvalidReading saying why not."""
    if len(payload) > MAX_READING_BYTES:
        raise InvalidReading(f"{len(payload)} bytes (a reading is at most "
                             f"{MAX_READING_BYTES})")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidReading("not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidReading("not a JSON object")
    if "ts" not in doc or "temp" not in doc:
        missing = [k for k in ("ts", "temp") if k not in doc]
        raise InvalidReading(f"missing field(s): {', '.join(missing)}")
    when = parse_ts(doc["ts"])
    return Reading(ts=format_ts(when), temp=parse_temp(doc["temp"]))
