"""Entries of the channel registry (`stanfleet.channels`).

Our streaming server announces each new channel there as
`{"channel": "devices.3F45.events"}` (STAN has no wildcard subscriptions).
Only the server writes it, but a reader still takes its bytes as untrusted:
anything that is not such an entry is None, never an exception.
"""

from __future__ import annotations

import json

REGISTRY_CHANNEL = "stanfleet.channels"


def channel_of(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    channel = doc.get("channel") if isinstance(doc, dict) else None
    return channel if isinstance(channel, str) else None
