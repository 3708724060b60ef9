"""Decoding of protobuf frames that arrive from the network.

Everything the client reads from NATS goes through :func:`decode`, so a
malformed frame is logged once, in one format, and never raises into a
nats-py callback (which would kill that subscription's task).
"""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

log = logging.getLogger("stanfleet.client")

M = TypeVar("M", bound=Message)

# nats-server answers a message that has a reply subject but no subscriber
# with an empty "NATS/1.0 503" status message on that reply subject.
NO_RESPONDERS_STATUS = "503"


def decode(cls: type[M], data: bytes, where: str) -> M | None:
    """Parse ``data`` as ``cls``; on a malformed frame log it and return None."""
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, TypeError) as exc:
        log.warning("%s malformed %s dropped bytes=%d err=%s", where, cls.__name__, len(data), exc)
        return None
    return msg


def is_no_responders(msg) -> bool:
    """True for nats-server's 'no responders' status reply (nats-py Msg)."""
    headers = msg.headers
    return bool(headers) and not msg.data and headers.get("Status") == NO_RESPONDERS_STATUS
