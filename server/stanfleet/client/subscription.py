"""A STAN subscription: its NATS inbox, its delivery task, ack, unsubscribe and close."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from nats.errors import ConnectionClosedError
from nats.errors import Error as NatsError

from stanfleet.pb import protocol_pb2 as pb

from .errors import (
    ErrBadSubscription,
    ErrCloseReqTimeout,
    ErrConnectionClosed,
    ErrNoServerSupport,
    ErrUnsubReqTimeout,
    ErrUnsubscribeRejected,
)
from .msg import Msg
from .session import Session
from .wire import decode

log = logging.getLogger("stanfleet.client")

MsgHandler = Callable[[Msg], Any]
ErrorHandler = Callable[[BaseException], Any]


class Subscription:
    """Returned by :meth:`Client.subscribe`; same attributes as stan.py's.

    Messages from the server go through our own queue and task rather than
    straight into a nats-py callback: nats-py cancels its callback task when
    its subscription is removed, and a ``cb`` that calls ``unsubscribe()``,
    ``close()`` or ``Client.close()`` would then be cancelled half-way.
    """

    def __init__(
        self,
        sc: Session,
        subject: str,
        cb: MsgHandler,
        error_cb: ErrorHandler | None = None,
        queue: str | None = None,
        durable_name: str | None = None,
        manual_acks: bool = False,
        pending_limits: int = 8192,
    ):
        self.subject = subject
        self.queue = queue
        self.cb = cb
        self.error_cb = error_cb
        self.durable_name = durable_name
        self.manual_acks = manual_acks
        self.inbox: str = sc._nc.new_inbox()
        self.ack_inbox: str | None = None
        self.sid: int | None = None  # the nats-py subscription id
        self._sc = sc
        self._nc = sc._nc
        self._pending_limits = pending_limits
        self._msgs_queue: asyncio.Queue = asyncio.Queue(maxsize=pending_limits)
        self._nsub = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._cb_is_async = inspect.iscoroutinefunction(cb)
        self._ack = pb.Ack(subject=subject)  # reused: only the sequence changes
        self._where = f"client={sc._client_id} channel={subject} inbox={self.inbox}"

    def __repr__(self) -> str:
        return (
            f"<stan subscription subject={self.subject!r} queue={self.queue!r} "
            f"durable={self.durable_name!r} inbox={self.inbox!r}>"
        )

    @property
    def pending_queue_size(self) -> int:
        """Messages received but not yet given to ``cb``."""
        pending = self._msgs_queue.qsize()
        if self._nsub is not None:
            pending += self._nsub.pending_msgs
        return pending

    @property
    def is_closed(self) -> bool:
        return self._closed

    # --- lifecycle (driven by Client) ---------------------------------------

    async def _listen(self) -> None:
        """Subscribe the inbox; done before the SubscriptionRequest, because
        the server may deliver as soon as it has answered."""
        self._nsub = await self._nc.subscribe(
            self.inbox, cb=self._enqueue, pending_msgs_limit=self._pending_limits
        )
        self.sid = self._nsub._id

    def _activate(self, ack_inbox: str) -> None:
        """Start delivery once the server has told us where acks go."""
        self.ack_inbox = ack_inbox
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _detach(self) -> None:
        """Stop receiving and delivering; no request to the server."""
        self._closed = True
        nsub, self._nsub = self._nsub, None
        if nsub is not None:
            try:
                await nsub.unsubscribe()
            except NatsError:
                pass  # connection closed or draining: interest is gone anyway
        task, self._task = self._task, None
        # From inside our own cb we must not cancel ourselves: _run stops
        # after the callback returns because _closed is set.
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # --- delivery ------------------------------------------------------------

    async def _enqueue(self, raw) -> None:
        await self._msgs_queue.put(raw)

    async def _run(self) -> None:
        queue = self._msgs_queue
        while not self._closed:
            raw = await queue.get()
            try:
                await self._deliver(raw)
            except Exception:
                # E.g. the ack could not be queued (NATS outbound buffer full
                # while reconnecting): the server redelivers; keep delivering.
                log.exception("%s delivery failed", self._where)

    async def _deliver(self, raw) -> None:
        proto = decode(pb.MsgProto, raw.data, self._where)
        if proto is None:
            return  # never acked, so the server redelivers it if it was real
        msg = Msg(proto, self)
        try:
            if self._cb_is_async:
                await self.cb(msg)
            else:
                result = self.cb(msg)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:  # noqa: BLE001 - any cb failure goes to error_cb
            # Not acked: the server redelivers after ack_wait, as with stan.py.
            await self._report(exc)
            return
        if not self.manual_acks and not self._closed:
            await self._send_ack(proto.sequence)

    async def _report(self, exc: Exception) -> None:
        if self.error_cb is None:
            log.error("%s callback raised", self._where, exc_info=exc)
            return
        try:
            result = self.error_cb(exc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("Exception in error callback for subscription to '%s'", self.subject)

    async def _send_ack(self, sequence: int) -> None:
        ack = self._ack
        ack.sequence = sequence
        try:
            await self._nc.publish(self.ack_inbox, ack.SerializeToString())
        except ConnectionClosedError:
            log.debug("%s seq=%d ack not sent: connection closed", self._where, sequence)

    # --- public API ------------------------------------------------------------

    async def ack(self, msg: Msg) -> None:
        """Acknowledge ``msg`` (needed with ``manual_acks=True``)."""
        self._sc._check_connected()
        if self._closed:
            raise ErrBadSubscription()
        ack = pb.Ack(subject=msg.proto.subject, sequence=msg.proto.sequence)
        try:
            await self._nc.publish(self.ack_inbox, ack.SerializeToString())
        except ConnectionClosedError:
            raise ErrConnectionClosed() from None

    async def unsubscribe(self) -> None:
        """Remove the subscription on the server; a durable's state is deleted."""
        await self._remove(close=False)

    async def close(self) -> None:
        """Remove the subscription here but keep a durable's state on the server."""
        await self._remove(close=True)

    async def _remove(self, close: bool) -> None:
        sc = self._sc
        sc._check_connected()
        if self._closed:
            raise ErrBadSubscription()
        subject = sc._sub_close_req_subject if close else sc._unsub_req_subject
        if not subject:
            raise ErrNoServerSupport()
        sc._forget(self)
        await self._detach()
        req = pb.UnsubscribeRequest(
            client_id=sc._client_id,
            subject=self.subject,
            inbox=self.ack_inbox or "",
            durable_name=self.durable_name or "",
        )
        timeout_error = ErrCloseReqTimeout if close else ErrUnsubReqTimeout
        resp = await sc._request(subject, req, pb.SubscriptionResponse, timeout_error)
        if resp.error:
            raise ErrUnsubscribeRejected(resp.error)
        log.debug("%s %s", self._where, "closed" if close else "unsubscribed")
