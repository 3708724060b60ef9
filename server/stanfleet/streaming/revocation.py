"""Revoked credentials end their STAN sessions.

`stanfleet creds revoke` rewrites the credentials store and has nats-server
reload its accounts, which closes the user's NATS connections. The STAN
session would outlive that: registered, shown online until its heartbeats
fail, and restored by the next start. The streaming server therefore watches
the store it was started with (`--security-dir`) and ends every session of a
user that is no longer in it, and skips such sessions when it restores.

Polled, because the store is a directory of files that another process
changes: a stat every DEFAULT_POLL_INTERVAL seconds costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ..security.creds import Store

log = logging.getLogger("stanfleet.streaming.revocation")

DEFAULT_POLL_INTERVAL = 0.25  # s between looks at the store


class RevocationWatch:
    def __init__(self, security_dir: str, on_change, interval: float = DEFAULT_POLL_INTERVAL):
        self.store = Store(security_dir)
        self._on_change = on_change  # async (set of current users) -> None
        self.interval = interval
        self._stamp: tuple | None = None
        self._task: asyncio.Task | None = None

    def users(self) -> set[str] | None:
        """Who has credentials now; None when the store cannot be read (then
        nothing is ended: an unreadable file is not a revocation)."""
        try:
            return set(self.store.users())
        except (OSError, ValueError, KeyError) as e:
            log.error("credentials store %s unreadable: %s", self.store.directory, e)
            return None

    def _changed(self) -> bool:
        try:
            st = os.stat(self.store.path("creds.json"))
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        changed = stamp != self._stamp
        self._stamp = stamp
        return changed

    def start(self) -> None:
        self._changed()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._changed():
                continue
            users = self.users()
            if users is None:
                continue
            try:
                await self._on_change(users)
            except Exception:
                log.exception("ending revoked sessions failed")
