"""Browser tests: `stanfleet up` as a process (secure: TLS, logins), and Debian's
Chromium driven through chromedriver (selenium). Without a browser the tests
skip and say why; .ci/setup installs one."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # screenshots, gitignored
CHROMIUM = os.environ.get("STANFLEET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STANFLEET_CHROMEDRIVER", "/usr/bin/chromedriver")
DEVICES = 3
UP_TIMEOUT = 90  # seconds for `up` to print its banner


def browser_missing() -> str:
    """Why no browser test can run here, or ''."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} not found (apt-get install chromium chromium-driver; .ci/setup does)"
    vendor = Path(__file__).resolve().parents[2] / "server/stanfleet/dashboard/static/node_modules/uplot"
    if not vendor.is_dir():
        return "the chart library is not installed (npm install in the dashboard's static/; .ci/setup does)"
    return ""


@dataclass
class Up:
    """A running `stanfleet up`: its dashboard URL, NATS URL and data directory."""
    proc: subprocess.Popen
    url: str
    nats: str
    data: Path

    def password(self, role: str) -> str:
        return json.loads((self.data / "security/services" / f"{role}.json").read_text())["password"]

    def spki(self) -> str:
        """The server key's SPKI hash: the browser trusts exactly this key
        (Chromium reads no CA file; pinning the fleet's key is as strict)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_pem_x509_certificate((self.data / "security/certs/server.pem").read_bytes())
        der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    why = browser_missing()
    if why:
        pytest.skip(f"browser tests skipped: {why}")
    data = tmp_path_factory.mktemp("up")
    log = open(data / "up.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stanfleet.cli", "up", "--data-dir", str(data), "--port", "0",
         "--artifact-port", "0", "--dashboard-port", "0", "--devices", str(DEVICES), "--plain"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        banner = _wait_for(log, proc, re.compile(r"dashboard (https://\S+)"))
        nats = re.search(r"nats (tls://\S+),", banner).group(1)
        yield Up(proc, re.search(r"dashboard (https://\S+)", banner).group(1), nats, data)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_for(log, proc, pattern) -> str:
    """The log so far once `pattern` appears in it (up prints its banner once ready)."""
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if pattern.search(text):
            return text
        if proc.poll() is not None:
            raise AssertionError(f"stanfleet up exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.2)  # polling a log file: up offers no other signal
    raise AssertionError(f"no dashboard banner within {UP_TIMEOUT}s:\n{text[-3000:]}")


@pytest.fixture
def browser(up, tmp_path):
    """A fresh headless Chromium that trusts the fleet's server key only."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--ignore-certificate-errors-spki-list={up.spki()}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
