"""deploy/systemd/: every unit passes `systemd-analyze verify` with no
warning, and its hardening keeps systemd's exposure score at "OK" or better."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/stanfleet/.venv/bin/stanfleet"
SERVICES = {"streaming-server", "listener", "release-serve", "dashboard"}
MAX_EXPOSURE = 40  # systemd-analyze security's threshold, tenths: 4.0 is still "OK"
HARDENING = ("User=stanfleet", "NoNewPrivileges=yes", "ProtectSystem=strict",
             "Restart=on-failure", "KillSignal=SIGTERM")

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd; .ci/setup installs it)")


@pytest.fixture
def units(tmp_path) -> list[Path]:
    """The units, with ExecStart pointing at this checkout's stanfleet: verify
    checks that the command exists, and /opt/stanfleet is where a site installs it."""
    here = os.path.join(os.path.dirname(sys.executable), "stanfleet")
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, here))
        out.append(copy)
    return out


def test_there_is_one_unit_per_service(units):
    assert {u.stem.removeprefix("stanfleet-") for u in units} == SERVICES


def test_units_verify_without_a_warning(units):
    for unit in units:
        assert INSTALLED in (UNITS / unit.name).read_text()
        out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stderr.strip() == "", f"{unit.name}: {out.stderr}"


def test_units_are_hardened(units):
    for unit in units:
        text = unit.read_text()
        assert all(line in text.splitlines() for line in HARDENING), unit.name
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                          f"--threshold={MAX_EXPOSURE}", *map(str, units)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
