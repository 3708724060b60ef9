"""The stanfleet streaming server: the STAN protocol, stored in JetStream.

The names are imported on first use, so `stanfleet streaming-server` can
start its nats-server before the heavy imports the server needs.
"""

__all__ = ["ServerOptions", "StreamingServer"]


def __getattr__(name: str):
    if name == "ServerOptions":
        from .options import ServerOptions

        return ServerOptions
    if name == "StreamingServer":
        from .server import StreamingServer

        return StreamingServer
    raise AttributeError(name)
