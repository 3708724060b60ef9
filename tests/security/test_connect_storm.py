"""Finding 5: one device's connect storm blocked every new session. Connect
requests were handled one at a time, each duplicate-clientID check waiting
0.5 s; 40 of them from one device made the other clients' connects time out."""

from __future__ import annotations

import asyncio
import os
import time

from stanfleet.pb import protocol_pb2 as pb

STORM = 40
OTHERS = 9
BOUND = 0.4  # s: below one duplicate-ID check (0.5 s), far below the 20 s seen


async def test_a_connect_storm_costs_other_clients_nothing(fleet):
    # device-3F45 takes its heartbeats and never answers them: every duplicate
    # connect waits the full liveness check (no responders would end it at once).
    storm_nc = await fleet.nats("device-3F45")
    async def ignore(msg) -> None:
        pass

    await storm_nc.subscribe("_INBOX.device-3F45.>", cb=ignore)
    silent = await fleet.raw("device-3F45", answer_heartbeats=False)
    silent.nc = storm_nc
    assert (await silent.connect()).error == ""
    discover = f"_STAN.discover.{fleet.cluster_id}"

    async def storm_connect(i: int) -> str:
        req = pb.ConnectRequest(client_id="device-3F45", protocol=1, conn_id=os.urandom(11),
                                heartbeat_inbox=f"_INBOX.device-3F45.hb{i}")
        r = await storm_nc.request(discover, req.SerializeToString(), timeout=30)
        return pb.ConnectResponse.FromString(r.data).error

    others = [await fleet.raw("listener", f"listener-{i}") for i in range(OTHERS)]

    async def timed(c) -> float:
        t0 = time.monotonic()
        resp = await asyncio.wait_for(c.connect(), 5)
        assert resp.error == ""
        return time.monotonic() - t0

    storm = asyncio.gather(*(storm_connect(i) for i in range(STORM)))
    await asyncio.sleep(0)  # the storm's requests go out first
    took = await asyncio.gather(*(timed(c) for c in others))
    errors = await storm
    assert max(took) < BOUND, took
    # The storm itself: at most one replaced the silent session, the rest were
    # refused at once (already registered, or over the connect rate).
    assert errors.count("") <= 1
    assert all("already registered" in e or "quota" in e for e in errors if e)
