"""Protocol errors the server sends back to STAN clients.

The texts match the original server's, because some clients compare them.
"""


class StanProtocolError(Exception):
    """A request the server refuses; the message goes back in the response's error field."""


ERR_INVALID_CLIENT = "stan: clientID already registered"
ERR_UNKNOWN_CLIENT = "stan: unknown clientID"
ERR_REPLACED = "client has been replaced or is no longer registered"
ERR_INVALID_SUB_REQ = "stan: invalid subscription request"
ERR_INVALID_ACK_WAIT = "stan: invalid ack wait time, should be >= 1s"
ERR_INVALID_MAX_INFLIGHT = "stan: invalid MaxInflight value, should be >= 1"
ERR_INVALID_SEQUENCE = "stan: invalid start sequence"
ERR_INVALID_TIME = "stan: invalid start time"
ERR_DUP_DURABLE = "stan: duplicate durable registration"
ERR_INVALID_UNSUB_REQ = "stan: invalid unsubscribe request"
ERR_INVALID_CLOSE_REQ = "stan: invalid close request"
ERR_INVALID_CONN_REQ = "stan: invalid connection request"
ERR_UNKNOWN_SUB = "stan: invalid subscription"
ERR_TOO_MANY_SUBS = "stan: too many subscriptions per channel"
