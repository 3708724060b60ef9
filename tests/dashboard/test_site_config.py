"""`stanfleet dashboard --config FILE` reads the site's deployment config: the
shared [nats], [database] and [artifacts] keys, its own [dashboard] table
over them, flags over both; a bad file is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from stanfleet.dashboard import cmd
from stanfleet.errors import CommandError

from .test_parts import _args

SITE = """
[nats]
urls = ["tls://n1:4222", "tls://n2:4222"]
cluster_id = "fleet"

[database]
url = "postgresql://stanfleet@db:5432/fleet"

[artifacts]
dir = "releases"
base_url = "https://fleet.example:8080"

[dashboard]
security_dir = "security"
host = "0.0.0.0"
port = 9443
"""


def test_shared_keys_then_the_dashboard_table_then_flags(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(SITE)
    c = cmd.load_config(_args(config=f))
    assert c.nats == "tls://n1:4222,tls://n2:4222"
    assert (c.cluster_id, c.db) == ("fleet", "postgresql://stanfleet@db:5432/fleet")
    assert (c.releases, c.url_base) == (str(tmp_path / "releases"), "https://fleet.example:8080")
    assert (c.security_dir, c.host, c.port) == (str(tmp_path / "security"), "0.0.0.0", 9443)
    c = cmd.load_config(_args(config=f, port=1443, nats="tls://n3:4222", db="/srv/fleet.db"))
    assert (c.port, c.nats, c.db) == (1443, "tls://n3:4222", "/srv/fleet.db")
    f.write_text(SITE + 'db = "other.db"\n')  # the dashboard's own table wins
    assert cmd.load_config(_args(config=f)).db == str(tmp_path / "other.db")


def test_the_site_files_checks_apply(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(SITE.replace("[database]", "[databse]"))
    with pytest.raises(CommandError, match="unknown section \\[databse\\]"):
        cmd.load_config(_args(config=f))


def test_a_bad_config_is_one_line_and_exit_1(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stanfleet.cli", "dashboard", "--config",
                          str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"stanfleet: {tmp_path / 'none.toml'}: ")


def test_the_commented_example_configures_the_dashboard():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "deploy" / "stanfleet.toml"
    c = cmd.load_config(_args(config=example))
    assert c.nats.count("tls://") == 3 and c.db.startswith("postgresql://")
    assert (c.host, c.port, c.url_base) == ("0.0.0.0", 8443, "https://fleet.example:8080")
    assert c.security_dir == str(example.parent / "security")
