"""asyncio NATS Streaming (STAN) client on nats-py 2.x.

Keeps the public API of asyncio-nats-streaming 0.4.0, so ported code changes
only its import::

    from stanfleet.client import Client as STAN
"""

from .client import DEFAULT_SERVERS, Client
from .errors import (
    ErrBadAck,
    ErrBadConnection,
    ErrBadSubscription,
    ErrCloseRejected,
    ErrCloseReqTimeout,
    ErrConnectionClosed,
    ErrConnectionLost,
    ErrConnectRejected,
    ErrConnectReqTimeout,
    ErrDuplicateClientID,
    ErrInvalidOption,
    ErrMaxPings,
    ErrNoResponders,
    ErrNoServerSupport,
    ErrPublishRejected,
    ErrServerResponse,
    ErrSubReqTimeout,
    ErrSubscriptionRejected,
    ErrTimeout,
    ErrTimeoutError,
    ErrUnsubReqTimeout,
    ErrUnsubscribeRejected,
    StanError,
)
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
    "DEFAULT_ACK_WAIT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_MAX_PUB_ACKS_INFLIGHT",
    "DEFAULT_PENDING_LIMIT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PING_MAX_OUT",
    "DEFAULT_SERVERS",
    "Client",
    "ErrBadAck",
    "ErrBadConnection",
    "ErrBadSubscription",
    "ErrCloseRejected",
    "ErrCloseReqTimeout",
    "ErrConnectRejected",
    "ErrConnectReqTimeout",
    "ErrConnectionClosed",
    "ErrConnectionLost",
    "ErrDuplicateClientID",
    "ErrInvalidOption",
    "ErrMaxPings",
    "ErrNoResponders",
    "ErrNoServerSupport",
    "ErrPublishRejected",
    "ErrServerResponse",
    "ErrSubReqTimeout",
    "ErrSubscriptionRejected",
    "ErrTimeout",
    "ErrTimeoutError",
    "ErrUnsubReqTimeout",
    "ErrUnsubscribeRejected",
    "Msg",
    "StanError",
    "Subscription",
]
