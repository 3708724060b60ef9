"""The stanfleet streaming server: the STAN protocol, stored in JetStream."""

from .options import ServerOptions
from .server import StreamingServer

__all__ = ["ServerOptions", "StreamingServer"]
