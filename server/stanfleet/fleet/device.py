"""One simulated board as the fleet runner sees it: its folders, process and recent lines."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from pathlib import Path

from .proxy import NetworkProxy

RECENT_LINES = 200  # per device, kept in memory for error messages and expect()
LOG_MODE = 0o600

# machine.reset_cause() values (sim/machine.py, as on the ESP32), passed to the
# next boot in SIM_RESET_CAUSE so the firmware sees why it started.
PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5


class Device:
    """One simulated board and what the runner knows about it."""

    def __init__(self, device_id: str, root: Path, proxy: NetworkProxy):
        self.id = device_id
        self.dir = root
        self.proxy = proxy
        self.powered = True
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0  # attempts to start the process, failed ones included (done)
        self.boots = 0
        self.crashes = 0  # exits the watchdog restarted
        self.reboots = 0  # machine.reset() exits
        self.last_exit: int | None = None
        self.recent: deque[tuple[int, str]] = deque(maxlen=RECENT_LINES)
        self.lines_seen = 0  # index of the next line, for expect(since=...)
        self._reset_pressed = False
        self._cause = PWRON_RESET
        self._log = None

    @property
    def flash_dir(self) -> Path:
        return self.dir / "flash"

    @property
    def log_path(self) -> Path:
        return self.dir / "log"

    def open_log(self) -> None:
        """Append to the log, readable by its owner only (0600, also a log an
        older version left open to all): it shows what the device printed."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        os.fchmod(fd, LOG_MODE)
        self._log = open(fd, "a", encoding="utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def tail(self, n: int = 20) -> str:
        return "\n".join(line for _, line in list(self.recent)[-n:])

    def _record(self, line: str) -> None:
        self.recent.append((self.lines_seen, line))
        self.lines_seen += 1
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()


def power_off(proc: asyncio.subprocess.Process | None) -> None:
    """SIGKILL the device's whole process group: a board loses power at once."""
    if proc is None or proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
