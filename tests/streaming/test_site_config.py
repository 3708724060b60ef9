"""`stanfleet streaming-server --site FILE`: the site's deployment config (the
TOML every service reads) fills the server's NATS URLs, cluster ID, CA, login,
store, FT group, replicas, monitor port, log format and quotas; the `-sc`
file and command-line flags win over it; a bad file is a one-line error."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import nats
from stanfleet.client import Client

from .serverproc import ServerProcess, free_port
from .test_go_flags import opts

SITE = """
[nats]
urls = ["tls://n1:4222", "tls://n2:4222", "tls://n3:4222"]
cluster_id = "fleet"
ca = "ca.pem"

[nats.creds]
streaming-server = "stan.json"

[streaming]
store = "file"
dir = "stan-data"
ft_group = "site"
replicas = 3
monitor_port = 8222

[log]
format = "json"
level = "warning"

[quotas.device]
msgs_per_sec = 7
"""


def site(tmp_path, text: str = SITE) -> str:
    (tmp_path / "stan.json").write_text(json.dumps({"user": "stan", "password": "s3cret"}))
    path = tmp_path / "site.toml"
    path.write_text(text)
    return str(path)


def test_the_site_file_fills_the_servers_settings(tmp_path):
    o = opts("--site", site(tmp_path))
    assert o.nats_url == "tls://n1:4222,tls://n2:4222,tls://n3:4222"
    assert o.cluster_id == "fleet"
    assert o.tls_ca == str(tmp_path / "ca.pem")  # relative to the file's folder
    assert (o.user, o.password) == ("stan", "s3cret")
    assert (o.store, o.data_dir) == ("file", str(tmp_path / "stan-data"))
    assert (o.ft_group, o.replicas, o.monitor_port) == ("site", 3, 8222)
    assert (o.log_format, o.log_level) == ("json", "warning")
    assert o.quotas["device"].msgs_per_sec == 7


def test_flags_and_the_go_config_file_win_over_the_site_file(tmp_path):
    sc = tmp_path / "stan.conf"
    sc.write_text("streaming { ft_group: other, store: memory }\n")
    o = opts("--site", site(tmp_path), "-sc", str(sc), "-cid", "mine",
             "-ns", "nats://10.0.0.9:4222", "--replicas", "1", "-m", "9000")
    assert (o.cluster_id, o.nats_url, o.replicas, o.monitor_port) == \
        ("mine", "nats://10.0.0.9:4222", 1, 9000)
    assert (o.ft_group, o.store) == ("other", "memory")
    assert o.tls_ca == str(tmp_path / "ca.pem")  # not overridden: still the file's


def test_keys_the_file_leaves_out_keep_the_servers_defaults(tmp_path):
    o = opts("--site", site(tmp_path, '[nats]\ncluster_id = "fleet"\n'))
    assert o.cluster_id == "fleet"
    assert o.nats_url is None and o.store == "memory" and o.ft_group is None
    assert o.log_format == "text"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stanfleet.cli", "streaming-server", *argv],
                          capture_output=True, text=True, timeout=60)


def test_a_missing_or_bad_site_file_is_one_line_and_a_non_zero_exit(tmp_path):
    out = run("--site", str(tmp_path / "none.toml"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"stanfleet: {tmp_path / 'none.toml'}: ")
    bad = site(tmp_path, '[streaming]\nstore = "sql"\n')
    out = run("--site", bad)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "streaming.store must be one of file, memory" in out.stderr
    bad = site(tmp_path, '[streaming]\nreplica = 3\n')
    out = run("--site", bad)
    assert out.returncode == 1 and "unknown key streaming.replica" in out.stderr


async def test_a_server_started_from_the_site_file_serves_its_cluster(broker, tmp_path):
    path = site(tmp_path, f"""
[nats]
urls = ["{broker.url}"]
cluster_id = "from-site"

[streaming]
store = "memory"
monitor_port = {free_port()}

[log]
format = "json"
""")
    server = ServerProcess("--site", path, log_path=str(tmp_path / "server.log"))
    await server.start(timeout=60)
    try:
        ready = next(line for line in server.lines if "streaming server ready" in line)
        assert json.loads(ready)["msg"].startswith("streaming server ready: cluster=from-site")
        nc = await nats.connect(broker.url)
        sc = Client()
        await sc.connect("from-site", "site-client", nats=nc)
        got = asyncio.get_running_loop().create_future()
        await sc.subscribe("hello", cb=lambda m: got.set_result(m.data))
        await sc.publish("hello", b"world")
        assert await asyncio.wait_for(got, 10) == b"world"
        await sc.close()
        await nc.close()
    finally:
        await server.stop()


def test_the_commented_example_configures_an_ft_member():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "deploy" / "stanfleet.toml"
    o = opts("--site", str(example))
    assert o.nats_url.count("tls://") == 3 and o.cluster_id == "fleet"
    assert (o.ft_group, o.replicas, o.store, o.monitor_port) == ("fleet", 3, "file", 8222)
    assert o.log_format == "json"
