"""The dashboard's HTTP side: pages, the JSON API, the live stream, access checks.

Pages are static HTML with their scripts (static/); data comes from the API.
Reads need a session; changes need a session whose role may make them
(auth.Session) and the session's CSRF token in X-CSRF-Token: a listener's
forged request is refused with 403 whatever the page shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

from aiohttp import web

from ..fleet.firmware_code import load
from .actions import ActionError, Actions, release_progress
from .auth import COOKIE, AuthError, Session, Sessions, check_password, open_session
from .fleetstate import FleetState
from .queries import bucket_for
from .rollup import BUCKET, FleetRollup
from .store import FleetDB

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "node_modules" / "uplot" / "dist"  # npm install in static/ (.ci/setup)
RANGES = {"hour": 3600, "day": 86400, "week": 7 * 86400}
DEVICE_ID = re.compile(r"^[A-Za-z0-9]+$")
LIVE_BATCH = 0.25  # seconds: changes within this window go out as one event
LOG_TAIL = 64 * 1024
PUBLIC = ("/login", "/static/", "/healthz")


class DashboardApp:
    def __init__(self, state: FleetState, actions: Actions, db_path: str,
                 sessions: Sessions | None, security_dir: str | None,
                 devices_dir: str | None = None, secure_cookie: bool = True,
                 rollup: FleetRollup | None = None):
        self.state, self.actions, self.db_path = state, actions, db_path
        self.sessions, self.security_dir = sessions, security_dir
        self.devices_dir, self.secure_cookie = devices_dir, secure_cookie
        self.rollup = rollup or FleetRollup()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._access])
        r = app.router
        r.add_get("/healthz", lambda req: web.Response(text="ok\n"))
        r.add_get("/login", self._page("login.html"))
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self._page("fleet.html"))
        r.add_get("/device/{id}", self._page("device.html"))
        r.add_get("/releases", self._page("releases.html"))
        r.add_get("/static/vendor/{name}", self.vendor)
        r.add_static("/static/", STATIC, append_version=False)
        r.add_get("/api/me", self.me)
        r.add_get("/api/fleet", self.fleet)
        r.add_get("/api/events", self.events)
        r.add_get("/api/chart", self.chart)
        r.add_get("/api/device/{id}", self.device)
        r.add_get("/api/releases", self.releases)
        r.add_post("/api/config", self.set_config)
        r.add_post("/api/releases/publish", self.publish)
        r.add_post("/api/releases/promote", self.promote)
        r.add_post("/api/alert-range", self.alert_range)
        return app

    # -- access -----------------------------------------------------------------------

    def session_of(self, request: web.Request) -> Session | None:
        if self.sessions is None:
            return open_session()
        return self.sessions.read(request.cookies.get(COOKIE))

    @web.middleware
    async def _access(self, request: web.Request, handler):
        if request.path.startswith(PUBLIC):
            return await handler(request)
        session = self.session_of(request)
        if session is None:
            if request.path.startswith("/api/"):
                raise web.HTTPUnauthorized(text='{"error": "log in first"}',
                                           content_type="application/json")
            raise web.HTTPFound("/login")
        request["session"] = session
        if request.method == "POST" and request.headers.get("X-CSRF-Token") != session.csrf:
            raise _refuse(403, "missing or wrong CSRF token")
        return await handler(request)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        if self.sessions is None:
            raise web.HTTPFound("/")
        try:
            await asyncio.to_thread(check_password, self.security_dir, user, password)
        except AuthError:
            raise web.HTTPFound("/login?error=1") from None
        _, cookie = self.sessions.new(user)
        resp = web.HTTPFound("/")
        resp.set_cookie(COOKIE, cookie, httponly=True, secure=self.secure_cookie,
                        samesite="Strict", path="/")
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    def _page(self, name: str):
        async def handler(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})
        return handler

    async def vendor(self, request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in ("uPlot.iife.min.js", "uPlot.min.css") or not (VENDOR / name).exists():
            raise web.HTTPNotFound(text="chart library not installed: run bash .ci/setup\n")
        return web.FileResponse(VENDOR / name)

    # -- reads ----------------------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        rules = load("cfgrules").RULES  # the keys a device accepts, and their bounds
        return web.json_response({**request["session"].as_json(),
                                  "secure": self.sessions is not None,
                                  "config_keys": {k: list(r) for k, r in rules.items()}})

    async def fleet(self, request: web.Request) -> web.Response:
        r = self.state.alert_range
        return web.json_response({"now": time.time(), "rows": self.state.rows(),
                                  "alert_range": {"low": r.low, "high": r.high}})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `rows` with the devices that changed, batched."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        q = self.state.watch()
        try:
            await resp.write(b": live\n\n")
            while True:
                try:
                    changed = set(await asyncio.wait_for(q.get(), 15))
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")  # also finds a closed page
                    continue
                await asyncio.sleep(LIVE_BATCH)  # gather what changes alongside
                while not q.empty():
                    changed |= q.get_nowait()
                data = json.dumps({"now": time.time(), "rows": self.state.rows(changed)})
                await resp.write(f"event: rows\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.state.unwatch(q)
        return resp

    async def chart(self, request: web.Request) -> web.Response:
        device = request.query.get("device") or None
        if device is not None and not DEVICE_ID.match(device):
            raise _refuse(400, "invalid device ID")
        try:
            end = float(request.query.get("end") or time.time())
            start = float(request.query["start"]) if "start" in request.query \
                else end - RANGES[request.query.get("range", "hour")]
        except (KeyError, ValueError):
            raise _refuse(400, "give range=hour|day|week or start and end (epoch seconds)") \
                from None
        if not start < end:
            raise _refuse(400, "start must be before end")
        series = await asyncio.to_thread(self._series, device, start, end)
        return web.json_response({"device": device, "start": start, "end": end,
                                  **series.as_json()})

    def _series(self, device, start, end):
        db = FleetDB(self.db_path)
        try:
            if device is None and bucket_for(end - start)[0] >= BUCKET:
                return self.rollup.series(db.queries, start, end)
            return db.queries.series(device, start, end)
        finally:
            db.close()

    async def device(self, request: web.Request) -> web.Response:
        device = request.match_info["id"]
        if not DEVICE_ID.match(device) or device not in self.state.devices:
            raise _refuse(404, f"unknown device {device!r}")
        rec = self.state.devices[device]
        history, configs, otas = [], [], []
        prev = None
        for received, st in rec.history:
            entry = {"received": received, "ts": st.ts, "version": st.version or "",
                     "config": st.config, "cfg_errors": list(st.cfg_errors),
                     "ota": {"state": st.ota.state, "version": st.ota.version or "",
                             "reason": st.ota.reason}}
            history.append(entry)
            if prev is None or prev.config != st.config or st.cfg_errors != prev.cfg_errors:
                configs.append({"ts": st.ts, "applied": st.config,
                                "errors": list(st.cfg_errors)})
            if st.ota.state and (prev is None or prev.ota != st.ota):
                otas.append({"ts": st.ts, **entry["ota"], "running": st.version or ""})
            prev = st
        changes = [h for h in self.actions.history if h.get("action") == "config"
                   and h.get("target") in (device, "*")]
        return web.json_response({"row": self.state.row(device), "history": history[::-1],
                                  "config_changes": configs[::-1], "requested": changes[::-1],
                                  "ota_attempts": otas[::-1], "log": self._log(device)})

    def _log(self, device: str) -> str | None:
        """The tail of the simulator's log for this device, where there is one."""
        if not self.devices_dir:
            return None
        path = os.path.join(self.devices_dir, device, "log")
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - LOG_TAIL))
                return f.read().decode(errors="replace")
        except OSError:
            return None

    async def releases(self, request: web.Request) -> web.Response:
        built = await asyncio.to_thread(self.actions.release_list)
        rows = self.state.rows()
        progress = [release_progress(r["version"], r["rollout"], rows)
                    for r in built if r["rollout"]]
        return web.json_response({"releases": built, "progress": progress[::-1]})

    # -- changes ---------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise _refuse(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise _refuse(400, "the body must be a JSON object")
        return body

    async def set_config(self, request: web.Request) -> web.Response:
        session: Session = request["session"]
        if not session.can_config:
            raise _refuse(403, f"role {session.user} may not change config")
        body = await self._body(request)
        target, settings = body.get("target"), body.get("settings")
        if not isinstance(target, str) or not (target == "*" or DEVICE_ID.match(target)) \
                or not isinstance(settings, dict) or not settings:
            raise _refuse(400, "give target (a device ID or *) and settings {key: value}")
        try:
            devices = await self.actions.set_config(session.user, target, settings)
        except ActionError as e:
            raise _refuse(400, str(e)) from None
        self.state.on_desired(await asyncio.to_thread(self._desired))
        return web.json_response({"sent": devices})

    def _desired(self) -> dict:
        db = FleetDB(self.db_path)
        try:
            return db.desired()
        finally:
            db.close()

    async def publish(self, request: web.Request, promote: bool = False) -> web.Response:
        session: Session = request["session"]
        if not session.can_release:
            raise _refuse(403, f"role {session.user} may not publish releases")
        body = await self._body(request)
        canary = 100 if promote else body.get("canary", 100)
        try:
            await self.actions.publish(session.user, str(body.get("version", "")), canary,
                                       promote=promote)
        except ActionError as e:
            raise _refuse(400, str(e)) from None
        return web.json_response({"published": body.get("version"), "rollout": canary})

    async def promote(self, request: web.Request) -> web.Response:
        return await self.publish(request, promote=True)

    async def alert_range(self, request: web.Request) -> web.Response:
        session: Session = request["session"]
        if not session.can_config:
            raise _refuse(403, f"role {session.user} may not change alert settings")
        body = await self._body(request)
        low, high = body.get("low"), body.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) \
                or not low < high:
            raise _refuse(400, "give numbers low < high")
        self.state.set_alert_range(float(low), float(high))
        return web.json_response({"low": low, "high": high})


def _refuse(status: int, text: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(text=json.dumps({"error": text}), content_type="application/json")


