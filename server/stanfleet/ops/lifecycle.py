"""SIGTERM/SIGINT stop a service; SIGHUP asks it to reload its config.

A service awaits `stopping()`, and registers what a reload does (new log
level, new retention) with `on_reload`; a failed reload is logged and the
service keeps its old settings, as daemons conventionally do.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Callable

log = logging.getLogger("stanfleet.ops")


class Lifecycle:
    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self._reloads: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def on_reload(self, fn: Callable[[], None]) -> None:
        self._reloads.append(fn)

    def reload(self) -> None:
        for fn in self._reloads:
            try:
                fn()
            except Exception as e:  # a bad edit must not take the service down
                log.error("reload failed, old settings kept: %s", e)
                return
        log.info("config reloaded")

    def _on_stop(self, sig: int) -> None:
        if not self.stop.is_set():
            log.info("%s: stopping", signal.Signals(sig).name)
        self.stop.set()

    async def stopping(self) -> None:
        await self.stop.wait()
