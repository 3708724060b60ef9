"""Entries of the channel registry (`stanfleet.channels`).

Our streaming server announces each new channel there as
`{"channel": "devices.3F45.events"}` (STAN has no wildcard subscriptions).
Only the server writes it, but a reader still takes its bytes as untrusted:
anything that is not such an entry is None, never an exception.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("stanfleet.registry")

REGISTRY_CHANNEL = "stanfleet.channels"


def channel_of(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    channel = doc.get("channel") if isinstance(doc, dict) else None
    return channel if isinstance(channel, str) else None


# How soon an entry whose channel could not be followed comes again. Short:
# the channel's readings or statuses wait for it, and following is idempotent.
RETRY_AFTER = 10  # seconds (the entry's ack_wait)


async def follow_channels(sc, follow, **subscribe_options) -> None:
    """Subscribe to the registry and await `follow(channel)` for each channel
    announced there. An entry is acked only once `follow` returned: when it
    raises (typically its subscribe timed out on a loaded or failing-over
    server), the entry comes again after RETRY_AFTER and the channel is tried
    again, instead of staying unfollowed for good. `follow` must be idempotent
    and undo its own bookkeeping when it raises."""

    async def on_entry(msg) -> None:
        channel = channel_of(msg.data)
        if channel is not None:
            try:
                await follow(channel)
            except Exception as e:  # noqa: BLE001 - any failure: the redelivery retries
                log.warning("channel %s not followed yet (%s); retried in %ds",
                            channel, e or type(e).__name__, RETRY_AFTER)
                return
        await sc.ack(msg)

    await sc.subscribe(REGISTRY_CHANNEL, cb=on_entry, deliver_all_available=True,
                       manual_acks=True, ack_wait=RETRY_AFTER, **subscribe_options)
