"""Service commands take their connection defaults from what `stanfleet up` made."""

from __future__ import annotations

from stanfleet.cli import build_parser
from stanfleet.services import settings
from stanfleet.services.listener_cmd import listener_config
from stanfleet.services.release_cmd import resolve


def test_plain_defaults_without_a_security_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["config", "set", "3F45", "sending_frequency=5"])
    conn = settings.connection(args, "config-manager", None)
    assert (conn.urls, conn.ca, conn.creds) == (["nats://127.0.0.1:4222"], None, None)


def test_tls_ca_and_the_roles_credentials_from_stanfleet_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sec = tmp_path / "stanfleet-data" / "security"
    (sec / "certs").mkdir(parents=True)
    (sec / "services").mkdir()
    (sec / "certs" / "ca.pem").write_text("x")
    for role in ("config-manager", "release-manager", "listener"):
        (sec / "services" / f"{role}.json").write_text("{}")
    p = build_parser()
    cfg = settings.connection(p.parse_args(["config", "set", "3F45", "sending_frequency=5"]),
                              "config-manager", None)
    assert cfg.urls == ["tls://127.0.0.1:4222"]
    assert cfg.ca == "stanfleet-data/security/certs/ca.pem"
    assert cfg.creds == "stanfleet-data/security/services/config-manager.json"
    rel = p.parse_args(["release", "publish", "1.2.0"])
    resolve(rel)
    assert rel.connection.creds.endswith("release-manager.json")
    assert rel.url_base == "https://127.0.0.1:8080"
    lst = p.parse_args(["listener"])  # a service: resolved with its --config, see below
    conn = settings.connection(lst, "listener", None)
    assert conn.creds.endswith("listener.json") and conn.urls == ["tls://127.0.0.1:4222"]
    # Flags still win.
    other = settings.connection(
        p.parse_args(["config", "show", "--nats", "tls://h:1", "--creds", "c.json"]),
        "config-manager", None)
    assert (other.urls, other.creds) == (["tls://h:1"], "c.json")


def test_a_service_takes_the_config_file_and_flags_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a demo fleet's security dir must not leak into a site's config
    sec = tmp_path / "stanfleet-data" / "security" / "services"
    sec.mkdir(parents=True)
    (sec / "listener.json").write_text("{}")
    site = tmp_path / "site"
    site.mkdir()
    (site / "listener.json").write_text('{"user": "listener", "password": "pw"}')
    (site / "stanfleet.toml").write_text("""
[nats]
urls = ["nats://n1:4222", "nats://n2:4222"]
cluster_id = "fleet"
[nats.creds]
listener = "listener.json"
[database]
url = "postgresql://stanfleet@db/fleet"
retention_days = 30
[listener]
name = "m1"
""")
    p = build_parser()
    args = p.parse_args(["listener", "--config", str(site / "stanfleet.toml")])
    cfg = settings.load(args)
    conn = settings.connection(args, "listener", cfg)
    assert conn.urls == ["nats://n1:4222", "nats://n2:4222"] and conn.cluster_id == "fleet"
    assert conn.creds == str(site / "listener.json") and conn.ca is None
    lc = listener_config(args, cfg)
    assert (lc.name, lc.db_path, lc.retention_days) == ("m1", "postgresql://stanfleet@db/fleet", 30)
    assert lc.nats_options["user"] == "listener"

    args = p.parse_args(["listener", "--config", str(site / "stanfleet.toml"), "--name", "m2",
                         "--nats", "nats://a:1,nats://b:2", "--db", "x.db",
                         "--retention-days", "0"])
    lc = listener_config(args, settings.load(args))
    assert (lc.name, lc.nats_url, lc.db_path, lc.retention_days) == (
        "m2", ["nats://a:1", "nats://b:2"], "x.db", 0)
