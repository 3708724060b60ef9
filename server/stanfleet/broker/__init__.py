"""The NATS broker: a real nats-server child process and its accounts file."""

from .accounts import Accounts, NatsUser, reload, write_accounts
from .nats_server import (
    DEFAULT_START_TIMEOUT,
    Broker,
    BrokerConfig,
    BrokerError,
    nats_server_binary,
)

__all__ = ["Accounts", "Broker", "BrokerConfig", "BrokerError", "DEFAULT_START_TIMEOUT",
           "NatsUser", "nats_server_binary", "reload", "write_accounts"]
