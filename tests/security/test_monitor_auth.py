"""Finding 7: the monitoring port listed client IDs and every heartbeat,
subscription and ack inbox to anyone who could reach it."""

from __future__ import annotations

import ssl

import aiohttp
from stanfleet.streaming import ServerOptions, StreamingServer


async def _get(fleet, path: str, auth: aiohttp.BasicAuth | None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=fleet.ca)
    url = f"https://localhost:{fleet.server.monitor_port}{path}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, auth=auth, ssl=ctx) as r:
            return r.status, await r.text()


async def test_monitoring_needs_credentials_when_security_is_on(make_fleet):
    fleet = await make_fleet(extra=("-m", "0"))
    dev = await fleet.raw("device-3F45")
    assert (await dev.connect()).error == ""
    path = "/streaming/clientsz?subs=1"
    for auth in (None, aiohttp.BasicAuth("admin", "wrong"),
                 aiohttp.BasicAuth("device-3F45", fleet.password("device-3F45")),
                 aiohttp.BasicAuth("listener", fleet.password("listener"))):
        status, body = await _get(fleet, path, auth)
        assert status == 401, (auth, body)
        assert "device-3F45" not in body and "_INBOX" not in body
    admin = aiohttp.BasicAuth("admin", fleet.password("admin"))
    status, body = await _get(fleet, path, admin)
    assert status == 200 and "device-3F45" in body
    # Remembered after the first bcrypt check, until the admin is revoked.
    assert (await _get(fleet, "/metrics", admin))[0] == 200
    fleet.store.revoke("admin")
    assert (await _get(fleet, "/metrics", admin))[0] == 401


async def test_monitoring_without_security_is_on_loopback_only(broker):
    server = StreamingServer(ServerOptions(nats_url=broker.url, host="0.0.0.0", monitor_port=0))
    await server.start()
    try:
        hosts = {a[0] for a in server.monitor._runner.addresses}
        assert hosts == {"127.0.0.1"}
    finally:
        await server.stop()
