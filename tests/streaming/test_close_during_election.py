"""A client's close while JetStream cannot take a registration's deletion (a
NATS node lost, the KV stream electing a leader): seen in the production
failover test, where a device closing for its OTA reboot came back and had
its durable refused as a duplicate for good. The fault is injected into the
real server's calls to its KV bucket; everything else is real."""

from __future__ import annotations

import nats
from nats.js.errors import NoStreamResponseError
from stanfleet.client import Client


async def device(stan):
    nc = await nats.connect(stan.nats_url)
    sc = Client()
    await sc.connect(stan.cluster_id, "device-EL01", nats=nc)
    return sc, nc


async def durables(sc) -> None:
    for name in ("cfg", "releases"):
        await sc.subscribe(f"devices.EL01.{name}", cb=lambda m: None, durable_name=name,
                           manual_acks=True)


async def test_every_subscription_goes_even_if_one_record_cannot(stan_server):
    state = stan_server.server.state
    real, calls = state.delete_sub, []

    async def first_fails(sub_id: str) -> None:
        calls.append(sub_id)
        if len(calls) == 1:
            raise NoStreamResponseError
        await real(sub_id)
    state.delete_sub = first_fails
    sc, nc = await device(stan_server)
    await durables(sc)
    try:
        await sc.close()
    except Exception:
        pass  # the close may be answered with an error: the record of one stayed
    await nc.close()
    assert len(calls) == 2
    sc, nc = await device(stan_server)  # back after its reboot, same clientID
    await durables(sc)  # before: "stan: duplicate durable registration", forever
    await sc.close()
    await nc.close()


async def test_a_registration_purge_is_retried_while_the_stream_has_no_leader(stan_server):
    kv = stan_server.server.state.subs
    real, failures = kv.purge, []

    async def leaderless_for_a_while(key: str, *args, **kwargs):
        if len(failures) < 3:
            failures.append(key)
            raise NoStreamResponseError
        return await real(key, *args, **kwargs)
    kv.purge = leaderless_for_a_while
    sc, nc = await device(stan_server)
    await durables(sc)
    await sc.close()  # answered without error: the purge went through on a later try
    await nc.close()
    assert len(failures) == 3
    assert await stan_server.server.state.load_subs() == []
