"""The answer to a STAN ConnectRequest that registers a session.

One definition for the two places that answer connects: the server
(server.py) and, before the server is ready, the early layer (early.py),
whose answers must be the same bytes the server would send.
"""

from __future__ import annotations

from ..pb import protocol_pb2 as pb
from .naming import Subjects

PROTOCOL_VERSION = 1
DEFAULT_PING_INTERVAL = 5
DEFAULT_PING_MAX_OUT = 3


def ping_settings(req: pb.ConnectRequest) -> tuple[int, int]:
    """(ping_interval, ping_max_out) the session gets: the client's, or Go's defaults."""
    return (req.ping_interval if req.ping_interval > 0 else DEFAULT_PING_INTERVAL,
            req.ping_max_out if req.ping_max_out > 0 else DEFAULT_PING_MAX_OUT)


def client_record(client_id: str, conn_id: bytes, hb_inbox: str, protocol: int,
                  ping_interval: int, ping_max_out: int, created: float,
                  owner: str | None) -> dict:
    """A session's registration as the clients bucket keeps it (state.py;
    server._restore reads it back). Written by the server, and by early.py."""
    return {"client_id": client_id, "conn_id": conn_id.hex(), "hb_inbox": hb_inbox,
            "protocol": protocol, "ping_interval": ping_interval,
            "ping_max_out": ping_max_out, "created": created, "owner": owner}


def accepted(subjects: Subjects, req: pb.ConnectRequest) -> pb.ConnectResponse:
    return session_response(subjects, *ping_settings(req))


def session_response(subjects: Subjects, ping_interval: int,
                     ping_max_out: int) -> pb.ConnectResponse:
    """The answer for a session with these ping settings (also the one a
    retried connect of a registered session gets again)."""
    s = subjects
    return pb.ConnectResponse(
        pub_prefix=s.pub_prefix, sub_requests=s.sub, unsub_requests=s.unsub,
        close_requests=s.close, sub_close_requests=s.subclose, ping_requests=s.pings,
        ping_interval=ping_interval, ping_max_out=ping_max_out, protocol=PROTOCOL_VERSION)
