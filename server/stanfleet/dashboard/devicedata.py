"""Device status messages, read defensively: odd JSON never raises.

A status message (`devices.<ID>.status`, firmware/app/device.py) is
`{"ts", "version", "config", "cfg_errors", "buffer_dropped", "ota": {"state",
"version", "reason"}, ...}`. Anything missing or of the wrong type becomes an
empty value. One module on purpose: a shared typed status parser can replace
`parse_status` without touching the rest of the dashboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ota:
    state: str = ""
    version: str = ""
    reason: str = ""


@dataclass(frozen=True)
class DeviceStatus:
    ts: str = ""
    version: str = ""
    config: dict = field(default_factory=dict)
    cfg_errors: tuple = ()
    buffer_dropped: int = 0
    ota: Ota = Ota()


def _text(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _scalars(value) -> dict:
    """A config dict with plain JSON scalars only (what the page can show)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items()
            if isinstance(v, (str, int, float, bool)) or v is None}


def parse_status(data: bytes | str) -> DeviceStatus | None:
    """The status in `data`, or None if it is not a JSON object."""
    try:
        doc = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(doc, dict):
        return None
    ota = doc.get("ota") if isinstance(doc.get("ota"), dict) else {}
    errors = doc.get("cfg_errors") if isinstance(doc.get("cfg_errors"), list) else []
    dropped = doc.get("buffer_dropped")
    return DeviceStatus(
        ts=_text(doc.get("ts")),
        version=_text(doc.get("version")),
        config=_scalars(doc.get("config")),
        cfg_errors=tuple(_text(e) for e in errors),
        buffer_dropped=dropped if isinstance(dropped, int) and not isinstance(dropped, bool) else 0,
        ota=Ota(_text(ota.get("state")), _text(ota.get("version")), _text(ota.get("reason"))),
    )
