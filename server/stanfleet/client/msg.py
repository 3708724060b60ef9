"""A delivered STAN message: a thin view over the MsgProto that came off the wire."""

from __future__ import annotations

from stanfleet.pb import protocol_pb2 as pb

from .session import Acker


class Msg:
    """Same properties as stan.py's Msg (``seq``, ``sequence``, ``data``,
    ``timestamp`` in ns), plus ``subject``, ``redelivered`` and
    ``redelivery_count``. Properties read the proto lazily: no copies per message.
    """

    __slots__ = ("proto", "sub")

    def __init__(self, proto: pb.MsgProto | None = None, sub: Acker | None = None):
        self.proto = proto
        self.sub = sub

    @property
    def data(self) -> bytes:
        return self.proto.data

    @property
    def sequence(self) -> int:
        return self.proto.sequence

    @property
    def seq(self) -> int:
        return self.proto.sequence

    @property
    def timestamp(self) -> int:
        """Server receive time, nanoseconds since the Unix epoch (as stan.py)."""
        return self.proto.timestamp

    @property
    def subject(self) -> str:
        return self.proto.subject

    @property
    def redelivered(self) -> bool:
        return self.proto.redelivered

    @property
    def redelivery_count(self) -> int:
        return self.proto.redelivery_count

    async def ack(self) -> None:
        """Acknowledge this message (for ``manual_acks`` subscriptions)."""
        await self.sub.ack(self)

    def __repr__(self) -> str:
        return (
            f"<stan msg subject={self.proto.subject!r} seq={self.proto.sequence} "
            f"time={self.proto.timestamp} redelivered={self.proto.redelivered}>"
        )
