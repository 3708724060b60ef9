"""One exception hierarchy for the STAN client, rooted at :class:`StanError`.

Names follow asyncio-nats-streaming (stan.py) and stan.go where they have one,
so ``except ErrConnectReqTimeout`` keeps working after a port. Every timeout is
also an :class:`asyncio.TimeoutError`, as in nats-py, so generic timeout
handling catches it too.
"""

from __future__ import annotations

import asyncio


class StanError(Exception):
    """Base of every error raised or reported by the STAN client."""

    default_message = "stan: error"

    def __init__(self, message: str | None = None):
        super().__init__(message if message is not None else self.default_message)

    @property
    def description(self) -> str:
        return str(self)


# --- timeouts -------------------------------------------------------------


class ErrTimeoutError(StanError, asyncio.TimeoutError):
    """Base of all timeouts (the name stan.py 0.3+ uses for it)."""

    default_message = "stan: timeout"


class ErrConnectReqTimeout(ErrTimeoutError):
    default_message = "stan: connect request timeout (possibly wrong cluster ID?)"


class ErrCloseReqTimeout(ErrTimeoutError):
    default_message = "stan: close request timeout"


class ErrSubReqTimeout(ErrTimeoutError):
    default_message = "stan: subscribe request timeout"


class ErrUnsubReqTimeout(ErrTimeoutError):
    default_message = "stan: unsubscribe request timeout"


class _InPlaceOfPubAck:
    """Mixin for errors an ``ack_handler`` receives in place of a PubAck.

    They carry the PubAck's ``guid`` and ``error`` fields, so handlers written
    for stan.py (``if ack.error: ...``) work unchanged.
    """

    def __init__(self, message: str | None = None, guid: str = ""):
        super().__init__(message)
        self.guid = guid

    @property
    def error(self) -> str:
        return str(self)


class ErrTimeout(_InPlaceOfPubAck, ErrTimeoutError):
    """A PubAck did not arrive within ``ack_wait``."""

    default_message = "stan: publish ack timeout"


# --- state and protocol errors ---------------------------------------------


class ErrConnectionClosed(_InPlaceOfPubAck, StanError):
    """The session is closed (by close(), or after the connection was lost)."""

    default_message = "stan: connection closed"


class ErrNoResponders(_InPlaceOfPubAck, StanError):
    """Nothing listens on the publish subject: no streaming server is there."""

    default_message = "stan: no streaming server listening for publish (no responders)"


class ErrBadConnection(StanError):
    default_message = "stan: invalid connection"


class ErrBadSubscription(StanError):
    default_message = "stan: invalid subscription"


class ErrBadAck(StanError):
    default_message = "stan: malformed ack"


class ErrNoServerSupport(StanError):
    default_message = "stan: not supported by server"


class ErrInvalidOption(StanError, ValueError):
    """An argument to connect/publish/subscribe is out of range or inconsistent."""

    default_message = "stan: invalid option"


# --- the server answered with an error -------------------------------------


class ErrServerResponse(StanError):
    """The streaming server rejected a request; the message is its error text."""


class ErrConnectRejected(ErrServerResponse):
    pass


class ErrDuplicateClientID(ErrConnectRejected):
    """The clientID is registered and its owner still answers heartbeats."""


class ErrSubscriptionRejected(ErrServerResponse):
    pass


class ErrUnsubscribeRejected(ErrServerResponse):
    pass


class ErrCloseRejected(ErrServerResponse):
    pass


class ErrPublishRejected(ErrServerResponse):
    """The PubAck carried an error. ``ack`` is the PubAck itself."""

    def __init__(self, message: str | None = None, ack: object | None = None):
        super().__init__(message)
        self.ack = ack


# --- connection lost (reported through conn_lost_cb) -----------------------


class ErrConnectionLost(StanError):
    """The session is gone; the message is the reason (server text if any)."""

    default_message = "stan: connection lost"


class ErrMaxPings(ErrConnectionLost):
    default_message = "stan: connection lost due to PING failure"


__all__ = [
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
    "StanError",
]
