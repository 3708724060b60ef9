"""`stanfleet deploy check` against a real nats-server, our streaming server
and PostgreSQL: a good site passes every line; each broken dependency is one
FAIL line and exit status 1."""

from __future__ import annotations

from stanfleet.security import certs

from ..pg import free_port
from .serviceproc import run_once


def site(tmp_path, stan, db_url: str, extra_nats: str = "", artifacts: str | None = None) -> str:
    releases = tmp_path / "releases"
    releases.mkdir(exist_ok=True)
    path = tmp_path / "site.toml"
    path.write_text(f"""
[nats]
urls = ["{stan.nats_url}"]
cluster_id = "{stan.cluster_id}"
{extra_nats}
[database]
url = "{db_url}"
[artifacts]
dir = "{artifacts or releases}"
""")
    return str(path)


def lines(out: str) -> dict[str, str]:
    """'what' -> the whole line, for each check printed."""
    return {line[6:28].strip(): line for line in out.splitlines()}


async def test_a_good_site_passes_every_check(stan_server, pg_url, tmp_path):
    rc, out, err = await run_once("deploy", "check", "--config",
                                  site(tmp_path, stan_server, pg_url))
    assert rc == 0, out + err
    checks = out.splitlines()
    assert all(line.startswith("ok  ") for line in checks), out
    got = lines(out)
    assert {"config", "database", "artifacts.dir"} <= set(got)
    assert any(k.startswith("nats 127.0.0.1:") for k in got)
    assert "cluster 'test-cluster' answered" in got["stan as anonymous"]
    assert "PostgreSQL" in got["database"] and "empty (created at start)" in got["database"]


async def test_unreachable_nats_is_one_fail_line(stan_server, pg_url, tmp_path):
    dead = f"nats://127.0.0.1:{free_port()}"
    cfg = site(tmp_path, stan_server, pg_url)
    text = open(cfg).read().replace(f'urls = ["{stan_server.nats_url}"]',
                                    f'urls = ["{stan_server.nats_url}", "{dead}"]')
    open(cfg, "w").write(text)
    rc, out, err = await run_once("deploy", "check", "--config", cfg)
    assert rc == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and dead in fails[0] and "cannot reach" in fails[0], out
    assert err == ""


async def test_a_bad_database_url_is_one_fail_line(stan_server, tmp_path):
    bad = f"postgresql://fleet:secret@127.0.0.1:{free_port()}/fleet"
    rc, out, _ = await run_once("deploy", "check", "--config", site(tmp_path, stan_server, bad))
    assert rc == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].split()[1] == "database", out
    assert "cannot reach PostgreSQL" in fails[0] and "secret" not in out


async def test_a_missing_certificate_file_is_one_fail_line(stan_server, pg_url, tmp_path):
    paths = certs.init(str(tmp_path / "certs"), ["127.0.0.1"])
    cfg = site(tmp_path, stan_server, pg_url, extra_nats=f'ca = "{paths.ca}"')
    text = open(cfg).read() + f'tls_cert = "{tmp_path}/gone.pem"\ntls_key = "{paths.server_key}"\n'
    open(cfg, "w").write(text)
    rc, out, _ = await run_once("deploy", "check", "--config", cfg)
    assert rc == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, out
    assert fails[0].split()[1] == "artifacts.tls_cert" and "gone.pem: no such file" in fails[0]
    assert "ok    nats.ca" in out


async def test_a_broken_config_file_is_one_fail_line(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[nats]\nurls = ["nats://x:4222"]\n[databse]\nurl = "x"\n')
    rc, out, _ = await run_once("deploy", "check", "--config", str(path))
    assert rc == 1 and out.count("\n") == 1
    assert out.startswith("FAIL  config") and "unknown section [databse]" in out


async def test_the_streaming_servers_login_is_checked_as_a_nats_login(stan_server, pg_url,
                                                                     tmp_path):
    """nats.creds.streaming-server is the server's own NATS user, no STAN client."""
    (tmp_path / "stan.json").write_text('{"user": "stan", "password": "pw"}')
    cfg = site(tmp_path, stan_server, pg_url,
               extra_nats='[nats.creds]\nstreaming-server = "stan.json"\n')
    rc, out, err = await run_once("deploy", "check", "--config", cfg)
    assert rc == 0, out + err
    line = next(x for x in out.splitlines() if "nats as streaming-server" in x)
    assert line.startswith("ok ") and "user stan logged in at 127.0.0.1:" in line, out
    assert "stan as streaming-server" not in out
