"""What a subscription and a message need from the connection they belong to.

`Client` implements these; `Subscription` and `Msg` only name them, so the
modules import one way (client -> subscription -> msg -> session) and a test
can drive a subscription with a stand-in session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .errors import ErrTimeoutError


class Session(Protocol):
    """The connection side of a subscription: its NATS link and its requests."""

    _nc: NATS
    _client_id: str
    _unsub_req_subject: str
    _sub_close_req_subject: str

    def _check_connected(self) -> None: ...

    def _forget(self, sub: Any) -> None: ...

    async def _request(self, subject: str, req: Any, resp_cls: Any,
                       timeout_error: type[ErrTimeoutError]) -> Any: ...


class Acker(Protocol):
    """Where a message's ack goes: the subscription that delivered it."""

    async def ack(self, msg: Any) -> None: ...
