"""What the dashboard knows about each device, and who to tell when it changes.

Fed from two sides: status messages (pushed by `follower.StatusFollower`) and
the newest reading per device (polled from the readings database by
`refresh_readings`). Every change wakes the page streams (server-sent events)
through `changes()`; they send only the rows that changed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..services.device_status import DeviceStatus
from .queries import epoch

HISTORY = 200  # status messages kept per device for its page
DEFAULT_FREQUENCY = 3  # seconds: the firmware's default sending_frequency
SILENT_INTERVALS = 3  # a device is silent after this many missed readings
BAD_OTA = ("failed", "rolled_back", "rejected")


@dataclass
class DeviceRecord:
    device: str
    status: DeviceStatus | None = None
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (received, status)
    last_ts: str = ""
    last_temp: float | None = None


@dataclass
class AlertRange:
    """Temperatures outside [low, high] raise an alert; the operator sets them."""
    low: float = -20.0
    high: float = 60.0


class FleetState:
    def __init__(self, connected: Callable[[], set[str]] | None = None):
        self.devices: dict[str, DeviceRecord] = {}
        self.desired: dict[str, dict] = {}
        self.alert_range = AlertRange()
        # The streaming server's client IDs, when the dashboard runs beside it
        # (stanfleet up); otherwise connection state is read from reading age.
        self._connected = connected
        self._watchers: set[asyncio.Queue] = set()
        self._flags: dict[str, tuple] = {}  # device -> (connection, alert kinds) last shown

    def record(self, device: str) -> DeviceRecord:
        rec = self.devices.get(device)
        if rec is None:
            rec = self.devices[device] = DeviceRecord(device)
        return rec

    # -- inputs ---------------------------------------------------------------------

    def on_status(self, device: str, status: DeviceStatus, received: float) -> None:
        rec = self.record(device)
        rec.status = status
        rec.history.append((received, status))
        self.changed({device})

    def on_readings(self, latest: dict[str, tuple[str, float]]) -> None:
        moved = set()
        for device, (ts, temp) in latest.items():
            rec = self.record(device)
            if (rec.last_ts, rec.last_temp) != (ts, temp):
                rec.last_ts, rec.last_temp = ts, temp
                moved.add(device)
        self.changed(moved)

    def on_desired(self, desired: dict[str, dict]) -> None:
        moved = {d for d in set(desired) | set(self.desired)
                 if desired.get(d) != self.desired.get(d)}
        self.desired = desired
        for d in moved:
            self.record(d)
        self.changed(moved)

    def set_alert_range(self, low: float, high: float) -> None:
        self.alert_range = AlertRange(low, high)
        self.changed(set(self.devices))

    def tick(self, now: float | None = None) -> None:
        """Time alone changes a row: a device falls silent, goes offline. Called
        after every poll; tells the pages about the rows whose flags moved."""
        now = time.time() if now is None else now
        moved = set()
        for device, rec in self.devices.items():
            flags = (self.connection(rec, now), tuple(a["kind"] for a in self.alerts(rec, now)))
            if self._flags.get(device) != flags:
                self._flags[device] = flags
                moved.add(device)
        self.changed(moved)

    # -- change notification ------------------------------------------------------

    def changed(self, devices: set[str]) -> None:
        if devices:
            for q in self._watchers:
                q.put_nowait(devices)

    def watch(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._watchers.add(q)
        return q

    def unwatch(self, q: asyncio.Queue) -> None:
        self._watchers.discard(q)

    # -- views ------------------------------------------------------------------------

    def frequency(self, rec: DeviceRecord) -> int:
        f = (rec.status.config if rec.status else {}).get("sending_frequency")
        return f if isinstance(f, int) and f > 0 else DEFAULT_FREQUENCY

    def connection(self, rec: DeviceRecord, now: float) -> str:
        if self._connected is not None:
            return "online" if f"device-{rec.device}" in self._connected() else "offline"
        if not rec.last_ts:
            return "unknown"
        return "online" if now - _epoch(rec.last_ts) <= SILENT_INTERVALS * self.frequency(rec) \
            else "offline"

    def alerts(self, rec: DeviceRecord, now: float) -> list[dict]:
        out = []
        if rec.last_ts:
            age = now - _epoch(rec.last_ts)
            limit = SILENT_INTERVALS * self.frequency(rec)
            if age > limit:
                out.append({"kind": "silent",
                            "text": f"silent for {int(age)} s (more than {limit} s)"})
        r = self.alert_range
        if rec.last_temp is not None and not r.low <= rec.last_temp <= r.high:
            out.append({"kind": "temperature",
                        "text": f"{rec.last_temp:.2f} °C outside {r.low:g}..{r.high:g} °C"})
        ota = rec.status.ota if rec.status else None
        if ota and ota.state in BAD_OTA:
            what = "rolled back" if ota.state == "rolled_back" else "failed"
            out.append({"kind": "ota", "text": f"OTA {ota.version} {what}: {ota.reason}"})
        return out

    def row(self, device: str, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        rec = self.record(device)
        st = rec.status
        applied = dict(st.config) if st else {}
        desired = self.desired.get(device, {})
        pending = sorted(k for k, v in desired.items() if applied.get(k) != v)
        return {
            "device": device,
            "temp": rec.last_temp,
            "ts": rec.last_ts,
            "version": (st.version or "") if st else "",
            "connection": self.connection(rec, now),
            "applied": applied,
            "desired": desired,
            "pending": pending,
            "ota": {"state": st.ota.state, "version": st.ota.version or "", "reason": st.ota.reason}
                   if st else {},
            "status_ts": st.ts if st else "",
            "alerts": self.alerts(rec, now),
        }

    def rows(self, devices=None) -> list[dict]:
        now = time.time()
        return [self.row(d, now) for d in sorted(self.devices if devices is None else devices)]


def _epoch(ts: str) -> float:
    try:
        return epoch(ts)
    except ValueError:
        return 0.0
