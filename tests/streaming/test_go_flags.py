"""nats-streaming-server's command line and configuration file, parsed: every
flag of the Go server's --help is accepted, with Go's syntax, defaults and
precedence (flags over the -sc file)."""

from __future__ import annotations

import argparse
import re
import subprocess

import pytest
from stanfleet.streaming import config_file, natsconf
from stanfleet.streaming.main import configure
from stanfleet.streaming.options import from_args

from .goref import require_go


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    configure(p)
    return p


def opts(*argv: str):
    return from_args(parser().parse_args(list(argv)))


def test_every_flag_of_the_go_help_is_accepted():
    out = subprocess.run([require_go(), "--help"], capture_output=True, text=True).stdout
    names = set(re.findall(r"(?:^|[\s,])(--?[A-Za-z_]+)", out))
    names -= {"-h", "--help"}
    assert len(names) > 90  # the whole table was read
    known = parser()._option_string_actions
    missing = sorted(n for n in names if n not in known)
    assert missing == []
    # Go's flag package takes each name with one dash or two
    for n in names:
        other = n[1:] if n.startswith("--") else "-" + n
        assert other in known, other


def test_defaults_are_the_go_servers():
    o = opts()
    assert (o.cluster_id, o.store, o.port, o.host) == ("test-cluster", "memory", 4222, "0.0.0.0")
    assert (o.hb_interval, o.hb_timeout, o.hb_fail_count) == (30.0, 10.0, 10)
    assert o.limits.defaults.max_msgs == 1_000_000
    # Sized for a fleet, not Go's 100 and 1000 (README: every device has three
    # channels and a durable on devices.releases); quotas per identity guard instead.
    assert (o.limits.max_channels, o.limits.defaults.max_subs) == (100_000, 100_000)
    assert (opts("-mc", "100").limits.max_channels, opts("-msu", "1000").limits.defaults.max_subs) \
        == (100, 1000)
    assert o.logtime and not o.debug and not o.trace


def test_go_flag_syntax():
    o = opts("-store=FILE", "--dir", "/tmp/x", "-SD=false", "-SV", "-mb", "10MB", "-ma=24h",
             "-hbi", "500ms", "-T=false", "--stan_debug", "true", "-DV")
    assert o.store == "file" and o.data_dir == "/tmp/x"
    assert o.debug and o.trace  # --stan_debug true after -SD=false: the last one wins
    assert o.limits.defaults.max_bytes == 10 * 1024 * 1024
    assert o.limits.defaults.max_age == 24 * 3600 and o.hb_interval == 0.5
    assert not o.logtime and o.nats_debug and o.nats_trace
    assert opts("-SDV").debug and opts("-SDV").trace


def test_flags_without_meaning_on_jetstream_are_explained():
    o = opts("--file_compact_enabled=false", "--file_slice_max_msgs", "100",
             "--cluster_log_path", "/x", "--syslog_name", "svc")
    assert "--file_slice_max_msgs: not applicable: JetStream manages files" in o.notes
    assert any(n.startswith("--cluster_log_path: not applicable") for n in o.notes)
    assert len(o.notes) == 4


@pytest.mark.parametrize("argv", [("-store", "sql"), ("--sql_driver", "postgres"),
                                  ("-st", "SQL", "--sql_source", "dsn")])
def test_sql_store_is_refused_naming_the_alternative(argv):
    with pytest.raises(ValueError, match="SQL store is not supported: use -store file"):
        opts(*argv)


def test_clustering_and_encryption_map_to_jetstream(monkeypatch):
    o = opts("--clustered", "--cluster_node_id", "a", "--cluster_peers", "b,c",
             "--cluster", "nats://127.0.0.1:6222", "--routes", "nats://h1:6222,nats://h2:6222")
    assert o.replicas == 3 and o.clustered and o.cluster_node_id == "a"
    assert o.routes == ["nats://h1:6222", "nats://h2:6222"]
    assert opts("--clustered").replicas == 3
    assert opts("--ft_group", "grp").ft_group == "grp"
    with pytest.raises(ValueError, match="encryption_key"):
        opts("--encrypt")
    monkeypatch.setenv("NATS_STREAMING_ENCRYPTION_KEY", "k3y")
    o = opts("--encrypt", "--encryption_cipher", "CHACHA")
    assert o.encrypt and o.encryption_key == "k3y" and o.encryption_cipher == "chachapoly"


GO_CONF = """
# nats-streaming-server's own example layout
port: 4333
http_port: 8333
streaming {
  id: "confcluster"
  store: "file"
  dir: "/var/stan"
  hb_interval: "2s"
  sd: true
  tls { client_cert: "c.pem", client_key: "k.pem", client_ca: "ca.pem" }
  store_limits {
    max_channels: 2
    max_msgs: 500
    max_bytes: 1MB
    channels {
      "limited.*": { max_msgs: 2 }
      "aged.>" { max_age: "1h" }
    }
  }
}
"""


def test_go_configuration_file(tmp_path):
    conf = tmp_path / "stan.conf"
    conf.write_text(GO_CONF)
    o = opts("-sc", str(conf))
    assert (o.cluster_id, o.store, o.data_dir, o.port, o.monitor_port) == \
        ("confcluster", "file", "/var/stan", 4333, 8333)
    assert o.hb_interval == 2.0 and o.debug
    assert (o.tls_client_cert, o.tls_client_key, o.tls_ca) == ("c.pem", "k.pem", "ca.pem")
    lim = o.limits
    assert lim.max_channels == 2 and lim.defaults.max_msgs == 500
    assert lim.defaults.max_bytes == 1024 * 1024
    assert lim.for_channel("limited.a").max_msgs == 2
    assert lim.for_channel("limited.a").max_bytes == 1024 * 1024  # inherited
    assert lim.for_channel("aged.x.y").max_age == 3600
    # command-line flags beat the file, as in Go
    o = opts("-sc", str(conf), "-p", "5000", "-mc", "7", "-cid", "flagged", "-store", "memory")
    assert (o.port, o.limits.max_channels, o.cluster_id, o.store) == (5000, 7, "flagged",
                                                                    "memory")


def test_configuration_file_without_streaming_block_and_json(tmp_path):
    top = tmp_path / "top.conf"
    top.write_text('id = top\nstore_limits: {max_subs: 3}\nmax_payload: 2MB\n')
    parsed = config_file.load(str(top))
    assert parsed.settings["cluster_id"] == "top" and parsed.nats == {"max_payload": 2 << 20}
    assert opts("-sc", str(top)).limits.defaults.max_subs == 3
    js = tmp_path / "limits.json"
    js.write_text('{"store_limits": {"max_channels": 9, "channels": {"a.*": {"max_msgs": 4}}}}')
    o = opts("-sc", str(js))
    assert o.limits.max_channels == 9 and o.limits.for_channel("a.b").max_msgs == 4


def test_nats_conf_syntax(tmp_path, monkeypatch):
    monkeypatch.setenv("STAN_DIR", "/data")
    (tmp_path / "inc.conf").write_text("included: yes\n")
    doc = natsconf.loads(
        'a = 1; b: "two", c 3KB\n// comment\nd [1, 2, "x"]\ne { f: $STAN_DIR, g: 10m }\n'
        "size: 2G\nflag: off\ninclude inc.conf\n", where=str(tmp_path / "x.conf"))
    assert doc["a"] == 1 and doc["b"] == "two" and doc["c"] == 3072
    assert doc["d"] == [1, 2, "x"] and doc["e"] == {"f": "/data", "g": 10_000_000}  # "10m" quoted
    assert doc["size"] == 2 * 1000**3 and doc["flag"] is False
    with pytest.raises(natsconf.ConfError, match=r"x.conf:1: "):
        natsconf.loads("a { b: 1", where="x.conf")


def test_a_bad_configuration_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("streaming { store_limits { max_msgs: -1 } }\n")
    with pytest.raises(ValueError, match="max_msgs must not be negative"):
        opts("-sc", str(bad))
    with pytest.raises(ValueError, match="cannot read configuration file"):
        opts("-sc", str(tmp_path / "missing.conf"))


def test_nats_config_file_gives_the_embedded_server_its_settings(tmp_path):
    conf = tmp_path / "nats.conf"
    conf.write_text("port: 4555\nhttp_port: 8555\nmax_payload: 4MB\n")
    o = opts("-c", str(conf))
    assert (o.port, o.monitor_port, o.nats_config) == (4555, 8555, str(conf))
    assert opts("-c", str(conf), "-p", "4666").port == 4666
