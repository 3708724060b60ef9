"""The dashboard's parts without a browser: status parsing, sessions and logins,
downsampled queries on a real SQLite file, alerts, the --config file."""

from __future__ import annotations

import argparse
import time

import pytest
from stanfleet.dashboard import auth, cmd
from stanfleet.dashboard.fleetstate import FleetState
from stanfleet.dashboard.queries import iso
from stanfleet.dashboard.store import FleetDB
from stanfleet.errors import CommandError
from stanfleet.security import creds
from stanfleet.services.device_status import parse as parse_status


def test_the_page_shows_empty_text_not_null_for_what_a_device_left_out():
    state = FleetState()
    state.on_status("A", parse_status(b'{"ts": "2026-11-25T10:00:00Z"}'), time.time())
    row = state.row("A")
    assert row["version"] == "" and row["ota"] == {"state": "idle", "version": "", "reason": ""}


def test_session_cookies_cannot_be_forged_or_outlive_their_expiry(monkeypatch):
    sessions = auth.Sessions(b"k" * 32)
    session, cookie = sessions.new("listener")
    assert sessions.read(cookie) == session
    body, sig = cookie.rsplit(".", 1)
    forged_body = auth.base64.urlsafe_b64encode(
        auth.json.dumps({"u": "operator", "c": session.csrf, "e": 2**40}).encode()).decode()
    assert sessions.read(f"{forged_body}.{sig}") is None
    assert auth.Sessions(b"other" * 8).read(cookie) is None
    assert sessions.read("garbage") is None and sessions.read(None) is None
    monkeypatch.setattr(auth.time, "time", lambda: time.time_ns() / 1e9 + auth.SESSION_SECONDS + 1)
    assert sessions.read(cookie) is None


def test_roles_decide_what_a_session_may_change():
    assert auth.Session("operator", "c", 0).can_config and auth.Session("operator", "c", 0).can_release
    assert not auth.Session("listener", "c", 0).can_config
    assert not auth.Session("listener", "c", 0).can_release
    assert auth.Session("config-manager", "c", 0).can_config
    assert not auth.Session("config-manager", "c", 0).can_release
    assert auth.Session("admin", "c", 0).can_release


def test_login_checks_the_creds_store(tmp_path, monkeypatch):
    monkeypatch.setattr(creds, "BCRYPT_ROUNDS", 4)
    store = creds.Store(str(tmp_path), cluster_id="c")
    path = store.add_service("operator")
    store.add_device("D1")
    password = auth.json.loads(open(path).read())["password"]
    auth.check_password(str(tmp_path), "operator", password)
    with pytest.raises(auth.AuthError):
        auth.check_password(str(tmp_path), "operator", password + "x")
    with pytest.raises(auth.AuthError):
        auth.check_password(str(tmp_path), "device-D1", password)  # devices never log in
    store.revoke("operator")
    with pytest.raises(auth.AuthError):
        auth.check_password(str(tmp_path), "operator", password)


def test_charts_are_downsampled_on_the_server(tmp_path):
    db = FleetDB(str(tmp_path / "fleet.db"))
    end = 1_800_000_000.0
    rows = [(d, i, iso(end - 7 * 86400 + i * 60), 20.0 + (i % 10))
            for d in ("A", "B") for i in range(7 * 1440)]
    db._readings.commit_batch(rows, [])
    week = db.queries.series("A", end - 7 * 86400, end)
    assert week.bucket == 600 and len(week.t) == 7 * 144
    assert week.lo[0] == 20.0 and week.hi[0] == 29.0 and week.mean[0] == 24.5
    hour = db.queries.series("A", end - 3600, end)
    assert hour.bucket == 10 and len(hour.t) == 60  # one reading a minute: 60 buckets
    fleet = db.queries.series(None, end - 86400, end)
    assert fleet.bucket == 600 and len(fleet.t) == 144
    assert db.queries.latest(["A", "B", "C"]) == {"A": (rows[7 * 1440 - 1][2], 29.0),
                                                  "B": (rows[-1][2], 29.0)}
    db.close()


def test_alerts_silent_out_of_range_and_failed_ota():
    state = FleetState()
    now = time.time()
    state.on_readings({"A": (iso(now - 100), 21.0), "B": (iso(now), 99.0)})
    state.on_status("C", parse_status(b'{"version": "1.0.0", "ota": {"state": "failed", '
                                      b'"version": "1.1.0", "reason": "bad signature"}}'), now)
    kinds = {r["device"]: [a["kind"] for a in r["alerts"]] for r in state.rows()}
    assert kinds == {"A": ["silent"], "B": ["temperature"], "C": ["ota"]}
    state.set_alert_range(0, 100)
    assert not state.row("B")["alerts"]


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.configure(p)
    return p.parse_args([x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))])


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "fleet.toml"
    f.write_text('[dashboard]\nport = 9443\ndb = "/srv/fleet.db"\n')
    c = cmd.load_config(_args(config=f, db="/other.db"))
    assert (c.port, c.db, c.nats) == (9443, "/other.db", cmd.DEFAULTS.nats)
    f.write_text('[dashboard]\nprot = 1\n')
    with pytest.raises(CommandError, match="unknown \\[dashboard\\] keys: prot"):
        cmd.load_config(_args(config=f))


def test_fleet_rollup_matches_the_live_query_and_sees_late_readings(tmp_path):
    from stanfleet.dashboard import rollup

    db = FleetDB(str(tmp_path / "fleet.db"))
    now = 1_800_000_000.0
    db._readings.commit_batch([(d, i, iso(now - 2 * 86400 + i * 60), float(i % 7))
                               for d in ("A", "B") for i in range(2 * 1440)], [])
    r = rollup.FleetRollup()
    cached = r.series(db.queries, now - 2 * 86400, now, now)
    live = db.queries.series(None, now - 2 * 86400, now)
    assert cached.t == live.t[:len(cached.t)] and cached.mean == live.mean[:len(cached.t)]
    assert len(cached.t) >= 2 * 144
    # A device that was offline sends an old reading late: after RECHECK the
    # recent buckets are read again.
    late = now - 3 * 3600
    db._readings.commit_batch([("C", 1, iso(late), 100.0)], [])
    bucket = float(int(late // 600) * 600)
    assert 100.0 not in r.series(db.queries, now - 86400, now, now).hi
    again = r.series(db.queries, now - 86400, now, now + rollup.RECHECK + 1)
    assert again.hi[again.t.index(bucket)] == 100.0
    db.close()


async def test_a_device_falling_silent_reaches_the_pages_without_any_new_message():
    state = FleetState()
    now = time.time()
    state.on_readings({"A": (iso(now), 21.0)})
    q = state.watch()
    state.tick(now)
    q.get_nowait()  # first sight
    state.tick(now + 1)
    assert q.empty()  # nothing moved
    state.tick(now + 10)  # more than 3 intervals of 3 s: silent, offline
    assert q.get_nowait() == {"A"}
    assert state.row("A", now + 10)["connection"] == "offline"


def test_release_progress_counts_the_canary_and_the_failures():
    from stanfleet.dashboard.actions import release_progress
    from stanfleet.fleet.firmware_code import load

    rollout = load("rollout")
    ids = [f"D{i:07d}" for i in range(1, 41)]
    chosen = [d for d in ids if rollout.selected(d, 20)]
    assert 0 < len(chosen) < len(ids)
    rows = []
    for d in ids:
        ota = {"state": "idle", "version": "", "reason": ""}
        version = "1.0.0"
        if d == chosen[0]:
            version = "1.1.0"
        elif d == chosen[1]:
            ota = {"state": "rolled_back", "version": "1.1.0", "reason": "not healthy after 3 boots"}
        heard = d != chosen[2]  # chosen[2] has sent no status yet
        rows.append({"device": d, "version": version if heard else "", "ota": ota,
                     "status_ts": "t" if heard else ""})
    p = release_progress("1.1.0", 20, rows)
    by = {x["device"]: x for x in p["devices"]}
    assert by[chosen[0]]["state"] == "installed"
    assert by[chosen[1]]["state"] == "rolled back"
    assert by[chosen[1]]["reason"] == "not healthy after 3 boots"
    assert by[chosen[2]]["state"] == "unknown"
    assert p["counts"]["not selected"] == len(ids) - len(chosen)
    assert p["installed"] == 1 and p["target"] == len(chosen)
