"""Protocol-1 client pings: how the client learns that its session is gone.

Every ``interval`` the client sends Ping{conn_id} to the server's
``ping_requests`` subject. Like stan.go, a tick first counts the ping it is
about to send; once more than ``max_out`` are outstanding (that is,
``max_out`` pings in a row went unanswered) the session is declared lost. A
PingResponse with an error (e.g. "client has been replaced or is no longer
registered") loses the session at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError
from nats.errors import Error as NatsError

from stanfleet.pb import protocol_pb2 as pb

from .errors import ErrConnectionLost, ErrMaxPings, StanError
from .wire import decode, is_no_responders

log = logging.getLogger("stanfleet.client")


class Pinger:
    def __init__(
        self,
        nc: NATS,
        client_id: str,
        subject: str,
        inbox: str,
        conn_id: bytes,
        interval: float,
        max_out: int,
        on_lost: Callable[[StanError], None],
    ):
        self._nc = nc
        self._client_id = client_id
        self._subject = subject
        self._inbox = inbox
        self._payload = pb.Ping(conn_id=conn_id).SerializeToString()  # never changes
        self.interval = interval
        self.max_out = max_out
        self.outstanding = 0
        self._on_lost = on_lost
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.outstanding += 1
            if self.outstanding > self.max_out:
                log.warning(
                    "client=%s pings unanswered=%d connection lost",
                    self._client_id,
                    self.outstanding - 1,
                )
                self._lost(ErrMaxPings())
                return
            try:
                await self._nc.publish(self._subject, self._payload, reply=self._inbox)
            except ConnectionClosedError:
                self._lost(ErrConnectionLost("stan: NATS connection closed"))
                return
            except NatsError as exc:
                # E.g. the outbound buffer is full while reconnecting: the ping
                # simply stays unanswered and counts against max_out.
                log.debug("client=%s ping not sent err=%s", self._client_id, exc)

    def on_response(self, msg) -> None:
        """Handle a message on the ping inbox (nats-py Msg)."""
        if is_no_responders(msg):
            # Nobody listens on ping_requests: counts as unanswered.
            return
        resp = decode(pb.PingResponse, msg.data, f"client={self._client_id} ping")
        if resp is None:
            return
        if resp.error:
            log.warning("client=%s ping error=%r connection lost", self._client_id, resp.error)
            self._lost(ErrConnectionLost(resp.error))
            return
        self.outstanding = 0

    def _lost(self, error: StanError) -> None:
        self._on_lost(error)
