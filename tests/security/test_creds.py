"""Credentials: who gets in, and how fast a revoked device is out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import nats
import pytest
from stanfleet.security.certs import client_context, init

from ..waiting import eventually


async def test_wrong_password_plaintext_and_a_wrong_ca_are_refused(fleet, tmp_path):
    async def quiet(e):
        pass

    opts = dict(allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5,
                error_cb=quiet)
    with pytest.raises(Exception, match="(?i)authorization"):
        await fleet.nats("device-3F45", password=fleet.password("device-9999"))
    with pytest.raises(Exception):  # TLS is required: plaintext gets nowhere
        await nats.connect(fleet.url.replace("tls://", "nats://"), user="device-3F45",
                           password=fleet.password("device-3F45"), **opts)
    other = init(str(tmp_path / "other"), ["localhost"])
    with pytest.raises(Exception):  # a server our CA did not sign is not trusted
        await nats.connect(fleet.url, tls=client_context(other.ca), tls_hostname="localhost",
                           user="device-3F45", password=fleet.password("device-3F45"), **opts)
    sc = await fleet.stan("device-3F45")  # the right password does get in
    assert not (await sc.publish("devices.3F45.events", b"{}")).error


async def test_revoke_cuts_a_device_off_at_once_and_add_lets_one_in(fleet):
    gone = asyncio.Event()

    async def on_closed():
        gone.set()

    password = fleet.password("device-9999")
    doomed = await fleet.nats("device-9999", closed_cb=on_closed)
    survivor = await fleet.stan("device-3F45")
    assert fleet.store.revoke("9999") == "device-9999"
    assert fleet.store.reloaded == fleet.server.broker.proc.pid
    await asyncio.wait_for(gone.wait(), 10)  # the reload closed its connection
    assert doomed.is_closed
    with pytest.raises(Exception, match="(?i)authorization"):
        await fleet.nats("device-9999", password=password)
    assert not (await survivor.publish("devices.3F45.events", b"{}")).error

    fleet.store.add_device("A1B2")

    async def admitted():
        try:
            sc = await fleet.stan("device-A1B2")
        except Exception:
            return False  # the reload is not through yet
        return not (await sc.publish("devices.A1B2.status", b"{}")).error
    await eventually(admitted)


def stanfleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stanfleet.cli", *args], capture_output=True,
                          text=True, timeout=60)


def test_creds_command_keeps_passwords_out_of_output_and_broker_config(tmp_path):
    d = str(tmp_path / "sec")
    out = stanfleet("creds", "--dir", d, "add-device", "3F45")
    assert out.returncode == 0, out.stderr
    creds_file = os.path.join(d, "devices", "device-3F45.json")
    device = json.load(open(creds_file))
    assert device["user"] == "device-3F45" and device["inbox_prefix"] == "_INBOX.device-3F45"
    assert os.stat(creds_file).st_mode & 0o777 == 0o600
    assert stanfleet("creds", "--dir", d, "add-service", "listener").returncode == 0
    listed = stanfleet("creds", "--dir", d, "list")
    assert "device-3F45" in listed.stdout and "listener" in listed.stdout
    accounts = open(os.path.join(d, "accounts.conf")).read()
    secrets = [device["password"], open(os.path.join(d, "stan.secret")).read().strip(),
               json.load(open(os.path.join(d, "services", "listener.json")))["password"]]
    for text in (out.stdout + out.stderr, listed.stdout, accounts):
        assert not any(s in text for s in secrets)
    assert accounts.count('"$2b$') == 3  # stan, device-3F45, listener: bcrypt only
    for name in ("accounts.conf", "creds.json", "stan.secret"):
        assert os.stat(os.path.join(d, name)).st_mode & 0o777 == 0o600
    again = stanfleet("creds", "--dir", d, "add-device", "3F45")
    assert again.returncode == 1 and "already has credentials" in again.stderr
    gone = stanfleet("creds", "--dir", d, "revoke", "3F45")
    assert gone.returncode == 0 and "no embedded nats-server running" in gone.stdout
    assert not os.path.exists(creds_file)
    assert "device-3F45" not in open(os.path.join(d, "accounts.conf")).read()
    assert "revoked" in stanfleet("creds", "--dir", d, "list").stdout
    assert stanfleet("creds", "--dir", d, "revoke", "3F45").returncode == 1
