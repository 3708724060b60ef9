"""What a valid temperature reading is, and how one is parsed.

Devices send `{"ts": "2026-11-25T10:00:00Z", "temp": 21.37}`. The seed's
devices sent the temperature as a string ("20.4"); a numeric string is
accepted, anything else is rejected with the reason.
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
EVENTS_CHANNEL = re.compile(r"^devices\.([A-Za-z0-9_-]+)\.events$")


class InvalidReading(ValueError):
    """A payload that is not a usable reading; the message says why."""


@dataclass(frozen=True)
class Reading:
    ts: str  # normalised ISO-8601 UTC, e.g. 2026-11-25T10:00:00Z
    temp: float


def device_of(channel: str) -> str | None:
    m = EVENTS_CHANNEL.match(channel)
    return m.group(1) if m else None


def parse_ts(text: str) -> dt.datetime:
    if not isinstance(text, str):
        raise InvalidReading("ts is not a string")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidReading(f"ts {text[:40]!r} is not ISO-8601") from None
    if when.tzinfo is None:
        raise InvalidReading("ts has no timezone (expected UTC, e.g. ...Z)")
    return when.astimezone(dt.timezone.utc)


def parse(payload: bytes) -> Reading:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise InvalidReading("not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidReading("not a JSON object")
    if "ts" not in doc or "temp" not in doc:
        missing = [k for k in ("ts", "temp") if k not in doc]
        raise InvalidReading(f"missing field(s): {', '.join(missing)}")
    when = parse_ts(doc["ts"])
    temp = doc["temp"]
    if isinstance(temp, bool) or not isinstance(temp, (int, float, str)):
        raise InvalidReading("temp is not a number")
    try:
        temp = float(temp)
    except ValueError:
        raise InvalidReading(f"temp {str(temp)[:20]!r} is not a number") from None
    if not math.isfinite(temp) or not MIN_TEMP <= temp <= MAX_TEMP:
        raise InvalidReading(f"temp {temp} is outside {MIN_TEMP}..{MAX_TEMP} °C")
    return Reading(ts=when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", temp=temp)
