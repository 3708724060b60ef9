"""`stanfleet deploy check` on a secured site: TLS with our CA and each
role's credentials, as a real deployment has them."""

from __future__ import annotations

import json

from ..deploy.serviceproc import run_once


def site(tmp_path, fleet, roles=("listener", "release-manager")) -> str:
    creds = "\n".join(f'{r} = "{fleet.store.path("services", r + ".json")}"' for r in roles)
    path = tmp_path / "site.toml"
    path.write_text(f"""
[nats]
urls = ["{fleet.url}"]
cluster_id = "{fleet.cluster_id}"
ca = "{fleet.ca}"
[nats.creds]
{creds}
[database]
url = "{tmp_path / 'fleet.db'}"
[artifacts]
dir = "{tmp_path}"
""")
    return str(path)


async def test_a_secured_site_passes_with_each_roles_credentials(fleet, tmp_path):
    rc, out, err = await run_once("deploy", "check", "--config", site(tmp_path, fleet))
    assert rc == 0, out + err
    assert "(TLS)" in out
    for role in ("listener", "release-manager"):
        assert any(line.startswith("ok    stan as " + role) for line in out.splitlines()), out


async def test_a_wrong_password_is_one_fail_line_naming_the_user(fleet, tmp_path):
    cfg = site(tmp_path, fleet, roles=("listener",))
    bad = tmp_path / "listener.json"
    bad.write_text(json.dumps({"user": "listener", "password": "pw-not-it"}))
    text = open(cfg).read().replace(fleet.store.path("services", "listener.json"), str(bad))
    open(cfg, "w").write(text)
    rc, out, _ = await run_once("deploy", "check", "--config", cfg)
    assert rc == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL  stan as listener"), out
    assert "refused user listener" in fails[0] and "pw-not-it" not in out
