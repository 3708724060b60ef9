"""Service commands take their connection defaults from what `stanfleet up` made."""

from __future__ import annotations

from stanfleet.cli import build_parser


def test_plain_defaults_without_a_security_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["config", "set", "3F45", "sending_frequency=5"])
    assert (args.nats, args.ca, args.creds) == ("nats://127.0.0.1:4222", None, None)


def test_tls_ca_and_the_roles_credentials_from_stanfleet_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sec = tmp_path / "stanfleet-data" / "security"
    (sec / "certs").mkdir(parents=True)
    (sec / "services").mkdir()
    (sec / "certs" / "ca.pem").write_text("x")
    for role in ("config-manager", "release-manager", "listener"):
        (sec / "services" / f"{role}.json").write_text("{}")
    p = build_parser()
    cfg = p.parse_args(["config", "set", "3F45", "sending_frequency=5"])
    assert cfg.nats == "tls://127.0.0.1:4222"
    assert cfg.ca == "stanfleet-data/security/certs/ca.pem"
    assert cfg.creds == "stanfleet-data/security/services/config-manager.json"
    rel = p.parse_args(["release", "publish", "1.2.0"])
    assert rel.creds.endswith("release-manager.json")
    assert rel.url_base == "https://127.0.0.1:8080"
    lst = p.parse_args(["listener"])
    assert lst.creds.endswith("listener.json")
    # Flags still win.
    other = p.parse_args(["config", "show", "--nats", "tls://h:1", "--creds", "c.json"])
    assert (other.nats, other.creds) == ("tls://h:1", "c.json")
