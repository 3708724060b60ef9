"""Protocol errors the server sends back to STAN clients.

The texts are the Go server's (v0.25.6) byte for byte, some without the
`stan: ` prefix as there, because clients and test harnesses compare them;
tests/streaming/test_go_errors.py checks each against the reference binary.
"""


class StanProtocolError(Exception):
    """A request the server refuses; the message goes back in the response's error field."""


ERR_INVALID_CLIENT = "stan: clientID already registered"
ERR_UNKNOWN_CLIENT = "stan: unknown clientID"
ERR_REPLACED = "client has been replaced or is no longer registered"
ERR_INVALID_SUB_REQ = "stan: invalid subscription request"
ERR_INVALID_ACK_WAIT = "stan: invalid ack wait time, should be >= 1s"
ERR_INVALID_MAX_INFLIGHT = "stan: invalid MaxInflight, should be >= 1"
ERR_INVALID_SEQUENCE = "stan: invalid start sequence"
ERR_INVALID_TIME = "stan: invalid start time"
ERR_DUP_DURABLE = "stan: duplicate durable registration"
ERR_INVALID_UNSUB_REQ = "stan: invalid unsubscribe request"
ERR_INVALID_CLOSE_REQ = "stan: invalid close request"
ERR_INVALID_CONN_REQ = "stan: invalid connection request"
ERR_UNKNOWN_SUB = "stan: invalid subscription"
ERR_TOO_MANY_SUBS = "too many subscriptions per channel"
ERR_TOO_MANY_CHANNELS = "too many channels"
ERR_INVALID_SUBJECT = "stan: invalid subject"
ERR_INVALID_START = "stan: invalid start position"
ERR_INVALID_PUB_REQ = "stan: invalid publish request"  # also: unknown or replaced session
ERR_INVALID_CLIENT_ID = "stan: invalid clientID: only alphanumeric and `-` or `_` characters allowed"
