"""The deployment config file: the example parses; mistakes are one message
that names the file and the key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from stanfleet.ops import logs, siteconfig
from stanfleet.ops.siteconfig import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_commented_example_parses_with_paths_beside_it():
    cfg = siteconfig.load(str(DEPLOY / "stanfleet.toml"))
    assert len(cfg.nats.urls) == 3 and cfg.nats.cluster_id == "fleet"
    assert cfg.nats.ca == str(DEPLOY / "security/certs/ca.pem")
    assert cfg.nats.creds["listener"] == str(DEPLOY / "security/services/listener.json")
    assert cfg.database.url.startswith("postgresql://") and cfg.database.retention_days == 365
    assert cfg.log.format == "json" and cfg.quotas == {}
    assert ("artifacts.tls_key", str(DEPLOY / "security/certs/server.key")) in cfg.files()


def test_an_empty_file_is_the_demo_defaults(tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    cfg = siteconfig.load(str(path))
    assert cfg.nats.urls == [siteconfig.DEFAULT_NATS_URL]
    assert cfg.database.url == str(tmp_path / siteconfig.DEFAULT_DATABASE_URL)


@pytest.mark.parametrize("text, message", [
    ("[nats]\nurl = 'nats://a:1'\n", "unknown key nats.url"),
    ("[natz]\n", "unknown section [natz]"),
    ("[nats]\nurls = 'nats://a:1'\n", "nats.urls has the wrong type (str)"),
    ("[nats]\nurls = ['a:1']\n", "nats.urls must list URLs"),
    ("[listener]\nops_port = true\n", "listener.ops_port has the wrong type (bool)"),
    ("[log]\nformat = 'xml'\n", "log.format must be one of text, json"),
    ("[database]\nurl = 'mysql://x/y'\n", "database.url must be"),
    ("[database]\nretention_days = -1\n", "retention_days must be 0"),
    ("[artifacts]\ntls_cert = 'c.pem'\n", "tls_cert and artifacts.tls_key go together"),
    ("[nats\n", "not valid TOML"),
])
def test_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        siteconfig.load(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        siteconfig.load(str(tmp_path / "none.toml"))


def test_json_log_lines(capsys):
    root = logging.getLogger()
    saved = list(root.handlers), root.level  # pytest's own handlers live there
    try:
        logs.setup("json", "debug")
        logging.getLogger("stanfleet.listener").info("device=%s seq=%d acked", "3F45", 12)
        doc = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert doc["msg"] == "device=3F45 seq=12 acked" and doc["level"] == "info"
        assert doc["logger"] == "stanfleet.listener" and doc["ts"].endswith("Z")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
