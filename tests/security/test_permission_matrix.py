"""The broker permissions, cell by cell, against docs/security-design.md.

The table "Permission matrix" in the design doc is parsed here and every cell
is tried on a real nats-server with the accounts `stanfleet creds` generates:
each identity subscribes to and publishes on each subject family, and the
broker's answer (a permissions violation or none) must be what the table says.
Doc and permissions cannot drift apart without this failing."""

from __future__ import annotations

import asyncio
import pathlib
import re

from stanfleet.security import creds

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "security-design.md"
USERS = {"device": "device-3F45", "listener": "listener", "config-manager": "config-manager",
         "release-manager": "release-manager", "admin": "admin", "server": creds.SERVER_USER}


def matrix() -> tuple[list[str], list[tuple[str, list[set]]]]:
    """(columns, [(subject template, [allowed ops per column])]) from the doc."""
    text = DOC.read_text()
    section = text[text.index("### Permission matrix"):]
    section = section[:section.index("\n#", 1)]  # up to the next heading
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        subject = cells[0].strip("`")
        ops = [set(c.split()) - {"-"} for c in cells[1:]]
        assert all(o <= {"pub", "sub"} for o in ops), ln
        rows.append((subject, ops))
    return columns, rows


def test_matrix_covers_every_identity():
    columns, rows = matrix()
    assert columns == list(USERS)
    assert len(rows) >= 20


VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.I)
SENTINEL = "_STAN.store.matrix-sentinel"  # refused to every client


async def _refusals(nc, expect_sentinel: bool) -> set[tuple[str, str]]:
    """Every (op, subject) the broker refused on nc. The broker names the
    subject in each -ERR (nats-py lowercases the text), so no error is pinned
    on the wrong probe; a last publish every client is refused marks the end
    of the answers."""
    out = set()
    if expect_sentinel:
        await nc.publish(SENTINEL, b"")
    await nc.flush()
    while True:
        if not expect_sentinel and nc.errors.empty():
            return out
        err = await asyncio.wait_for(nc.errors.get(), 10)
        m = VIOLATION.search(str(err))
        assert m, err
        op = "pub" if m.group(1).lower() == "publish" else "sub"
        if (op, m.group(2)) == ("pub", SENTINEL.lower()):
            return out
        out.add((op, m.group(2)))


async def test_broker_enforces_the_matrix(fleet):
    columns, rows = matrix()
    cid = fleet.cluster_id
    secret = pathlib.Path(fleet.store.path("stan.secret")).read_text().strip()
    wrong = []
    for col, role in enumerate(columns):
        user = USERS[role]
        nc = await fleet.nats(user, secret if role == "server" else None)
        subjects = {}
        for template, ops in rows:
            subject = template.replace("<cluster>", cid).replace("<user>", user)
            subjects[subject] = ops[col]
            sub = await nc.subscribe(subject)
            await nc.publish(subject, b"")
            await sub.unsubscribe()
        refused = await _refusals(nc, expect_sentinel=role != "server")
        for subject, want in subjects.items():
            got = {op for op in ("pub", "sub") if (op, subject.lower()) not in refused}
            if got != want:
                wrong.append(f"{role} {subject}: broker allows {sorted(got)}, doc says "
                             f"{sorted(want)}")
        assert nc.is_connected
    assert not wrong, "\n".join(wrong)


async def test_service_cannot_write_into_a_channel_store(fleet):
    """Finding 2: a listener (read-only) sent a raw NATS request to the
    JetStream store subject of devices.<ID>.cfg and it was stored."""
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.3F45.cfg", b'{"sending_frequency": 5}')  # the stream exists
    stream = fleet.server.channels.channels["devices.3F45.cfg"].stream
    before = (await fleet.server.nc.jsm().stream_info(stream)).state.messages
    nc = await fleet.nats("listener")
    store = fleet.server.subjects.store_subject("devices.3F45.cfg")
    probes = (store, fleet.server.subjects.js_ack_prefix + ".1", "$JS.API.STREAM.LIST")
    for subject in probes:
        await nc.publish(subject, b'{"sending_frequency": 1}', reply="_INBOX.listener.r")
    refused = await _refusals(nc, expect_sentinel=True)
    assert {("pub", s.lower()) for s in probes} <= refused
    after = (await fleet.server.nc.jsm().stream_info(stream)).state.messages
    assert after == before


async def test_server_subjects_stay_in_its_account_whatever_the_permissions(make_fleet,
                                                                          monkeypatch):
    """Even a service allowed to publish on all of `_STAN.>` (the old
    permissions) reaches only the exported request subjects."""
    monkeypatch.setattr(creds, "role_publish", lambda role, cid: ["_STAN.>", "$JS.>", "$KV.>"])
    fleet = await make_fleet()
    cfg = await fleet.stan("config-manager", "config-manager-1")
    await cfg.publish("devices.3F45.cfg", b'{"sending_frequency": 5}')
    stream = fleet.server.channels.channels["devices.3F45.cfg"].stream
    nc = await fleet.nats("release-manager")
    for subject in (fleet.server.subjects.store_subject("devices.3F45.cfg"),
                    fleet.server.subjects.js_ack_prefix + ".1",
                    f"$KV.STAN_{fleet.cluster_id}_clients.x"):
        try:
            reply = await nc.request(subject, b"{}", timeout=1)
        except Exception as e:
            assert re.search(r"no responders|timeout", type(e).__name__ + str(e), re.I), e
        else:
            raise AssertionError(f"{subject} answered: {reply.data!r}")
    # The JetStream API it reaches is its own account's, which has none.
    reply = await nc.request("$JS.API.STREAM.LIST", b"{}", timeout=5)
    assert b"not enabled" in reply.data
    info = await fleet.server.nc.jsm().stream_info(stream)
    assert info.state.messages == 1
