"""Following channels announced in the registry (services/registry.py): an
entry whose channel could not be followed comes again until it is."""

from __future__ import annotations

import asyncio

from stanfleet.services import registry

from ..client.helpers import connect


async def test_a_channel_whose_follow_failed_is_followed_when_its_entry_comes_again(
        stan_server, monkeypatch):
    monkeypatch.setattr(registry, "RETRY_AFTER", 1)  # the entry's ack_wait
    sc = await connect(stan_server)
    tries: list[str] = []
    followed = asyncio.Event()

    async def follow(channel: str) -> None:
        if channel != "devices.D1.events":
            return
        tries.append(channel)
        if len(tries) == 1:
            # What a loaded server does to the follower's own subscribe.
            raise TimeoutError("stan: subscribe request timeout")
        followed.set()

    await registry.follow_channels(sc, follow)
    await sc.publish("devices.D1.events", b"{}")  # a new channel: announced
    await asyncio.wait_for(followed.wait(), 15)
    assert tries == ["devices.D1.events", "devices.D1.events"]
    await sc.close()

