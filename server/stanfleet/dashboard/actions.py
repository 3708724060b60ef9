"""What an operator changes from the dashboard: config and releases.

Validation is the commands' own: settings pass the firmware's rules
(cfgrules, through configmgr.parse_settings) before anything is published,
and a release must be built and, to be promoted, published before. Changes go
out on a STAN session with the operator role's credentials.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ..client.errors import StanError
from ..errors import CommandError
from ..fleet.firmware_code import load
from ..services.configmgr import parse_settings, send
from ..services.connection import open_session
from ..services.releases import ReleaseDir, check_version, publish, rollouts, save_rollout
from .store import FleetDB

log = logging.getLogger("stanfleet.dashboard")


class ActionError(Exception):
    """A change refused for a reason the operator can fix (shown on the page)."""


class Actions:
    def __init__(self, nats_url: str | list[str], cluster_id: str, nats_options: dict, db_path: str,
                 releases_dir: str, url_base: str):
        self.url, self.cluster_id, self.options = nats_url, cluster_id, nats_options
        self.db_path, self.releases = db_path, ReleaseDir(releases_dir)
        self.url_base = url_base
        self._session = None
        self._lock = asyncio.Lock()
        self.history: list[dict] = []  # what was changed from the page, newest last

    async def _sc(self):
        # One session, opened at the first change and reopened if it was lost.
        if self._session is None or self._session[1].is_closed:
            self._session = await open_session(self.url, self.cluster_id,
                                               f"dashboard-operator-{int(time.time() * 1000)}",
                                               once=True, **self.options)
        return self._session[0]

    async def close(self) -> None:
        if self._session is not None:
            sc, nc = self._session
            self._session = None
            try:
                await sc.close()
            finally:
                await nc.close()

    async def _drop(self) -> None:
        """Forget a session that failed; the next change opens a new one."""
        try:
            await self.close()
        except Exception:  # it was broken already
            self._session = None

    def _db(self, fn, *args):
        db = FleetDB(self.db_path)
        try:
            return fn(db, *args)
        finally:
            db.close()

    async def set_config(self, who: str, target: str, settings: dict) -> list[str]:
        """Send settings to one device or, with target "*", every known device."""
        try:
            checked = parse_settings([f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                      for k, v in settings.items()])
        except CommandError as e:
            raise ActionError(str(e)) from None
        known = await asyncio.to_thread(self._db, FleetDB.known_devices)
        devices = known if target == "*" else [target]
        if not devices or (target != "*" and target not in known):
            raise ActionError(f"unknown device {target!r}")
        async with self._lock:
            try:
                sc = await self._sc()
                for device in devices:
                    await send(sc, device, checked)
                    await asyncio.to_thread(self._db, FleetDB.record_desired, device, checked)
            except (StanError, asyncio.TimeoutError, CommandError) as e:
                await self._drop()
                raise ActionError(f"not sent: {e}") from None
        self._log(who, "config", target=target, settings=checked)
        return devices

    def release_list(self) -> list[dict]:
        published = rollouts(self.releases.path)
        out = []
        for v in self.releases.versions():
            a = self.releases.artifact(v)
            out.append({"version": v, "size": a.size, "sha256": a.sha256,
                        "rollout": published.get(v)})
        return out

    async def publish(self, who: str, version: str, canary: int, promote: bool = False) -> None:
        try:
            version = check_version(version)
            if promote and version not in rollouts(self.releases.path):
                raise ActionError(f"{version} was never published; publish it first")
            if not isinstance(canary, int) or isinstance(canary, bool) or not 1 <= canary <= 100:
                raise ActionError("canary must be a percentage between 1 and 100")
            artifact = await asyncio.to_thread(self.releases.artifact, version)
            async with self._lock:
                await publish(await self._sc(), artifact, self.url_base, canary)
        except CommandError as e:
            raise ActionError(str(e)) from None
        except (StanError, asyncio.TimeoutError) as e:
            await self._drop()
            raise ActionError(f"not published: {e}") from None
        save_rollout(self.releases.path, version, canary)
        self._log(who, "promote" if promote else "publish", version=version, rollout=canary)

    def _log(self, who: str, what: str, **details) -> None:
        entry = {"ts": time.time(), "user": who, "action": what, **details}
        self.history.append(entry)
        del self.history[:-500]
        log.info("dashboard %s by %s: %s", what, who, details)


def release_progress(version: str, rollout: int, rows: list[dict]) -> dict:
    """Where each device stands with `version`, and the counts for the progress bar."""
    from ..services.device_status import OtaReport
    from ..services.releases import ota_state

    rules = load("rollout")
    devices, counts = [], {}
    for r in rows:
        raw = r.get("ota") or {}  # services/device_status.py has checked each field
        ota = OtaReport(state=raw.get("state") or "idle", version=raw.get("version"),
                        reason=raw.get("reason") or "")
        if not r.get("status_ts"):
            state, reason = "unknown", "no status reported"
        else:
            state, reason = ota_state(r.get("version") or None, ota, version)
        # Who takes part follows from the ID alone, also for a device never heard from.
        if state in ("pending", "unknown") and not rules.selected(r["device"], rollout):
            state = "not selected"
        counts[state] = counts.get(state, 0) + 1
        devices.append({"device": r["device"], "version": r.get("version", ""),
                        "state": state, "reason": reason})
    target = sum(n for s, n in counts.items() if s != "not selected")
    return {"version": version, "rollout": rollout, "target": target,
            "installed": counts.get("installed", 0), "counts": counts, "devices": devices}
