"""The per-identity rules, as pure functions (tests/security/test_isolation.py runs
them through a real broker)."""

import json

import pytest
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.authz import (
    Denied,
    Identity,
    check_client_id,
    check_owns,
    check_publish,
    check_subscribe,
    identity_of,
)

DEV = Identity("DEVICES", "device-3F45")


def test_identity_comes_from_the_request_info_header():
    hdr = {"Nats-Request-Info": json.dumps({"acc": "DEVICES", "user": "device-3F45"})}
    assert identity_of(hdr) == DEV and DEV.device_id == "3F45"
    assert identity_of({}) is None and identity_of({"Nats-Request-Info": "{bad"}) is None


def test_device_is_confined_to_its_own_channels():
    check_client_id(DEV, "device-3F45")
    check_publish(DEV, "devices.3F45.events")
    check_publish(DEV, "devices.3F45.status")
    check_subscribe(DEV, "devices.3F45.cfg", "_INBOX.device-3F45.x")
    check_subscribe(DEV, "devices.releases", "_INBOX.device-3F45.y")
    for call in (lambda: check_client_id(DEV, "device-9999"),
                 lambda: check_publish(DEV, "devices.9999.events"),
                 lambda: check_publish(DEV, "devices.releases"),
                 lambda: check_publish(DEV, "devices.3F45.cfg"),
                 lambda: check_publish(DEV, "devices.9999.cfg"),
                 lambda: check_subscribe(DEV, "devices.9999.cfg", "_INBOX.device-3F45.x"),
                 lambda: check_subscribe(DEV, "devices.3F45.events", "_INBOX.device-3F45.x"),
                 lambda: check_subscribe(DEV, "devices.3F45.cfg", "_INBOX.device-9999.x"),
                 lambda: check_owns(DEV, "device-9999")):
        with pytest.raises(Denied):
            call()


def test_services_get_their_roles_rights_only():
    cfg = Identity("SERVICES", "config-manager")
    check_publish(cfg, "devices.3F45.cfg")
    with pytest.raises(Denied):
        check_publish(cfg, "devices.releases")
    with pytest.raises(Denied):
        check_publish(cfg, "devices.3F45.cfg.extra")  # '*' is one token
    rel = Identity("SERVICES", "release-manager")
    check_publish(rel, "devices.releases")
    lst = Identity("SERVICES", "listener")
    check_subscribe(lst, "devices.3F45.events", "_INBOX.listener.x")
    with pytest.raises(Denied):
        check_publish(lst, "devices.3F45.events")
    with pytest.raises(Denied):
        check_client_id(Identity("SERVICES", "stranger"), "stranger")


async def test_with_authz_on_a_request_without_identity_is_refused(make_stan_server):
    """No Nats-Request-Info (no account import in between): nothing is allowed,
    and the server keeps serving."""
    from ..streaming.rawstan import RawStan

    srv = await make_stan_server(authz=True)
    c = await RawStan.open(srv.nats_url, srv.cluster_id, "device-3F45")
    try:
        resp = await c.connect()
        assert "not authorized" in resp.error and "no identity" in resp.error
        s = srv.server.subjects
        c.resp = pb.ConnectResponse(pub_prefix=s.pub_prefix, sub_requests=s.sub,
                                    unsub_requests=s.unsub, close_requests=s.close,
                                    sub_close_requests=s.subclose, ping_requests=s.pings)
        assert (await c.publish("devices.3F45.events", b"{}")).error  # unknown client
        sub = await c.subscribe("devices.3F45.cfg", "_INBOX.device-3F45.x")
        assert "not authorized" in sub.error
        assert "not authorized" in await c.close()
    finally:
        await c.vanish()
    assert srv.server.clients.clients == {}
