"""asyncio NATS Streaming (STAN) client on nats-py 2.x.

Keeps the public API of asyncio-nats-streaming 0.4.0, so ported code changes
only its import::

    from stanfleet.client import Client as STAN
"""

from .client import DEFAULT_SERVERS, Client
from .errors import *  # noqa: F403 - the error hierarchy is part of the API
from .errors import __all__ as _errors_all
from .msg import Msg
from .options import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_PUB_ACKS_INFLIGHT,
    DEFAULT_PENDING_LIMIT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_MAX_OUT,
)
from .subscription import Subscription

__all__ = [
    "Client",
    "Msg",
    "Subscription",
    "DEFAULT_SERVERS",
    "DEFAULT_ACK_WAIT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_PUB_ACKS_INFLIGHT",
    "DEFAULT_PENDING_LIMIT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_MAX_OUT",
    *_errors_all,
]
