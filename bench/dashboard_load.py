"""Dashboard load times with 1,000 devices and a week of readings in the database.

    .venv/bin/python bench/dashboard_load.py [--devices 1000] [--interval 300] [--days 7]

Generates the readings in a fresh SQLite file, as the listener writes them: by
default one reading per device every 5 minutes for a week (2,016,000 rows; a
field thermometer reporting every few minutes is the common case, our demo's
3 s is not), plus a status message per device. Then runs the real dashboard
service (TLS, a logged-in operator session) and times:

- the fleet page: in Chromium (when installed), from navigation until the
  table shows its first page of the 1,000 devices; and its data request
  (/api/fleet) alone;
- a week chart: one device's (/api/chart?range=week, ~1,000 buckets) and the
  fleet's min/mean/max over all devices, over HTTPS; in Chromium, the device
  page until the week chart is drawn. The fleet's week is aggregated once at
  the dashboard's start (rollup.py; printed) and then read from memory.

Each figure is the median of 5 runs (the first, cold run is printed too),
beside the 1 s target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import ssl
import statistics
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stanfleet.dashboard.devicedata import parse_status  # noqa: E402
from stanfleet.dashboard.queries import iso  # noqa: E402
from stanfleet.dashboard.service import Dashboard, DashboardConfig  # noqa: E402
from stanfleet.security import creds  # noqa: E402
from stanfleet.security.certs import init as certs_init  # noqa: E402
from stanfleet.services.readings_db import ReadingsDB  # noqa: E402

TARGET = 1.0
RUNS = 5


def generate(path: str, devices: list[str], interval: int, days: int, end: float) -> int:
    db = ReadingsDB(path)
    rng = random.Random(1)
    n = 0
    steps = days * 86400 // interval
    db.conn.execute("BEGIN")
    for d in devices:
        base = rng.uniform(15, 25)
        db.conn.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (d, iso(end - days * 86400)))
        db.conn.executemany(
            "INSERT INTO readings VALUES (?, ?, ?, ?, ?)",
            ((d, i + 1, iso(end - (steps - i) * interval), round(base + rng.gauss(0, 0.5), 2),
              iso(end)) for i in range(steps)))
        n += steps
    db.conn.execute("COMMIT")
    db.close()
    return n


def line(name: str, runs: list[float]) -> str:
    med = statistics.median(runs[1:]) if len(runs) > 1 else runs[0]
    ok = "ok" if med <= TARGET else "OVER TARGET"
    return (f"{name:<52} {med * 1000:7.0f} ms  (cold {runs[0] * 1000:.0f} ms)  "
            f"target {TARGET * 1000:.0f} ms  {ok}")


async def timed(http, url, ctx) -> float:
    t = time.perf_counter()
    async with http.get(url, ssl=ctx) as r:
        body = await r.read()
        assert r.status == 200, (r.status, body[:200])
    return time.perf_counter() - t


def browser_figures(base: str, spki: str, cookie: str, device: str, tmp: str) -> list[str]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return ["browser figures skipped: selenium not installed"]
    if not (os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")):
        return ["browser figures skipped: no /usr/bin/chromium and /usr/bin/chromedriver"]
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,1000", f"--user-data-dir={tmp}/chromium",
              f"--ignore-certificate-errors-spki-list={spki}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(base + "healthz")
        driver.add_cookie({"name": "stanfleet_session", "value": cookie, "path": "/"})
        fleet, chart = [], []
        for _ in range(RUNS + 1):
            t = time.perf_counter()
            driver.get(base)
            WebDriverWait(driver, 30, 0.01).until(
                lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")) == 50
                and "(1000)" in b.find_element(By.ID, "device-count").text)
            fleet.append(time.perf_counter() - t)
        for _ in range(RUNS + 1):
            driver.get(f"{base}device/{device}")
            WebDriverWait(driver, 30, 0.01).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, "#chart.rendered"))
            t = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, 'button[data-range="week"]').click()
            WebDriverWait(driver, 30, 0.01).until(
                lambda b: "10 min buckets" in b.find_element(By.ID, "chart-label").text
                and b.find_elements(By.CSS_SELECTOR, "#chart.rendered canvas"))
            chart.append(time.perf_counter() - t)
        return [line("fleet page in Chromium (1,000 devices, first page)", fleet),
                line("device page week chart in Chromium (click to drawn)", chart)]
    finally:
        driver.quit()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--interval", type=int, default=300, help="seconds between readings")
    p.add_argument("--days", type=int, default=7)
    a = p.parse_args()
    logging.getLogger("stanfleet").setLevel(logging.CRITICAL)  # no NATS here: quiet retries
    tmp = tempfile.mkdtemp(prefix="dashboard-bench-")
    sec = os.path.join(tmp, "security")
    certs = certs_init(os.path.join(sec, "certs"), ["127.0.0.1", "localhost"])
    creds.BCRYPT_ROUNDS = 4
    store = creds.Store(sec, cluster_id="bench")
    for role in ("operator", "listener"):
        store.add_service(role)
    devices = [f"D{i:07d}" for i in range(1, a.devices + 1)]
    end = time.time()
    t = time.perf_counter()
    rows = generate(os.path.join(tmp, "fleet.db"), devices, a.interval, a.days, end)
    size = os.path.getsize(os.path.join(tmp, "fleet.db")) / 1e6
    print(f"generated {rows:,} readings ({a.devices} devices, one per {a.interval} s, "
          f"{a.days} days; {size:.0f} MB) in {time.perf_counter() - t:.0f} s", flush=True)

    dash = Dashboard(DashboardConfig(nats="nats://127.0.0.1:1", security_dir=sec,
                                     db=os.path.join(tmp, "fleet.db"),
                                     releases=os.path.join(tmp, "releases"),
                                     devices_dir=None, port=0))
    for d in devices:
        dash.state.on_status(d, parse_status(json.dumps(
            {"ts": iso(end), "version": "1.0.0", "config": {"sending_frequency": a.interval},
             "ota": {"state": "idle"}})), end)
    t = time.perf_counter()
    await dash.start()  # creates the (ts, temp) index the fleet charts use, once
    print(f"dashboard started in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    await asyncio.wait_for(dash.warmed, 600)
    print(f"fleet week buckets computed once at start in {time.perf_counter() - t:.1f} s "
          "(in the background; later views read them from memory)", flush=True)
    await asyncio.wait_for(dash.poller.polled.wait(), 60)
    base = dash.url
    ctx = ssl.create_default_context(cafile=certs.ca)
    _, cookie = dash.sessions.new("operator")
    try:
        async with aiohttp.ClientSession(cookies={"stanfleet_session": cookie}) as http:
            for name, path in [("fleet data /api/fleet (1,000 rows)", "api/fleet"),
                               ("week chart, one device (/api/chart)",
                                f"api/chart?device={devices[len(devices) // 2]}&range=week"),
                               ("week chart, fleet min/mean/max over all devices",
                                "api/chart?range=week")]:
                runs = [await timed(http, base + path, ctx) for _ in range(RUNS + 1)]
                print(line(name, runs), flush=True)
        spki = _spki(certs.server)
        for text in await asyncio.to_thread(browser_figures, base, spki, cookie,
                                            devices[len(devices) // 3], tmp):
            print(text, flush=True)
    finally:
        await dash.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # hundreds of MB of generated readings


def _spki(cert_path: str) -> str:
    import base64
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


if __name__ == "__main__":
    asyncio.run(main())
