"""The STAN session: connect, publish, subscribe, ack, close.

Same public API as asyncio-nats-streaming 0.4.0 (``stan.aio.client.Client``),
on nats-py 2.x. Subjects always come from the server's ConnectResponse.

Long because `Client` is one class with the whole asyncio-nats-streaming API
and its connection state machine; subscriptions, PubAcks and pings live in
their own modules.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.nuid import NUID

from stanfleet import ordered_flush
from stanfleet.pb import protocol_pb2 as pb

from .errors import (
    ErrBadConnection,
    ErrCloseRejected,
    ErrCloseReqTimeout,
    ErrConnectionClosed,
    ErrConnectRejected,
    ErrConnectReqTimeout,
    ErrDuplicateClientID,
    ErrInvalidOption,
    ErrNoResponders,
    ErrPublishRejected,
    ErrServerResponse,
    ErrSubReqTimeout,
    ErrSubscriptionRejected,
    ErrTimeout,
    ErrTimeoutError,
    StanError,
)
from .msg import Msg
from .options import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_PUB_ACKS_INFLIGHT,
    DEFAULT_PENDING_LIMIT,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_MAX_OUT,
    build_subscription_request,
    ping_interval_from_wire,
    ping_interval_wire,
    validate_connect,
)
from .pings import Pinger
from .pubacks import AckHandler, PubAckTracker
from .subscription import ErrorHandler, MsgHandler, Subscription
from .wire import decode, is_no_responders

__version__ = "0.4.0+stanfleet"

DEFAULT_SERVERS = ["nats://127.0.0.1:4222"]
DEFAULT_DISCOVER_PREFIX = "_STAN.discover"
PROTOCOL_ONE = 1  # protocol with client pings and conn_id

log = logging.getLogger("stanfleet.client")

ConnLostHandler = Callable[[StanError], Any]

_NEW, _CONNECTED, _CLOSED = "new", "connected", "closed"


class Client:
    """Asyncio client for NATS Streaming."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Fresh per-session state (a Client may connect again after close)."""
        self._nc: NATS | None = None
        self._owns_nc = False
        self._state = _NEW
        self._cluster_id = ""
        self._client_id = ""
        self._conn_id = b""
        self._connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self._conn_lost_cb: ConnLostHandler | None = None
        # Subjects from the ConnectResponse (names as in stan.py).
        self._pub_prefix = ""
        self._sub_req_subject = ""
        self._unsub_req_subject = ""
        self._close_req_subject = ""
        self._sub_close_req_subject = ""
        self._ping_req_subject = ""
        # Our own inboxes and their nats-py subscriptions.
        self._hb_inbox: str | None = None
        self._ack_subject: str | None = None  # pub acks arrive on <this>.<guid>
        self._ping_inbox: str | None = None
        self._internal_subs: list = []
        self._pub_acks: PubAckTracker | None = None
        self._pub_msg: pb.PubMsg | None = None  # reused for every publish
        self._guid_base = ""
        self._guid_seq = 0
        self._sub_map: dict[str, Subscription] = {}
        self._pinger: Pinger | None = None
        self._lost_task: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<stan client v{__version__} client_id={self._client_id!r} state={self._state}>"

    # --- properties --------------------------------------------------------

    @property
    def nc(self) -> NATS | None:
        """The NATS connection in use (borrowed or our own)."""
        return self._nc

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def is_connected(self) -> bool:
        return self._state == _CONNECTED

    @property
    def is_closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def pending_pub_acks(self) -> int:
        return len(self._pub_acks) if self._pub_acks is not None else 0

    # --- connect ------------------------------------------------------------

    async def connect(
        self,
        cluster_id: str,
        client_id: str,
        nats: NATS | None = None,
        servers: list[str] | str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_pub_acks_inflight: int = DEFAULT_MAX_PUB_ACKS_INFLIGHT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        ping_max_out: int = DEFAULT_PING_MAX_OUT,
        conn_lost_cb: ConnLostHandler | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        nats_kwargs: dict[str, Any] | None = None,
        connect_attempts: int = 1,
    ) -> None:
        """Start a session with the streaming cluster ``cluster_id``.

        Pass a connected nats-py client as ``nats`` to borrow it (you close it),
        or ``servers`` to have the client open and own its connection. ``loop``
        is accepted for stan.py compatibility and ignored: the running loop is used.
        ``connect_attempts`` > 1 asks again, as the same session, when a
        server is there but did not answer within ``connect_timeout`` (its
        store electing a leader, a connect storm); 1 is stan.py's behaviour.
        """
        del loop
        if self._state == _CONNECTED:
            raise ErrBadConnection("stan: already connected")
        validate_connect(
            cluster_id,
            client_id,
            connect_timeout,
            max_pub_acks_inflight,
            ping_interval,
            ping_max_out,
        )
        if nats is not None and servers is not None:
            raise ErrInvalidOption("stan: pass either nats= or servers=, not both")
        self._reset()
        self._cluster_id = cluster_id
        self._client_id = client_id
        self._connect_timeout = connect_timeout
        self._connect_attempts = max(1, connect_attempts)
        self._conn_lost_cb = conn_lost_cb
        if nats is None:
            self._nc = await _open_nats(servers, nats_kwargs)
            self._owns_nc = True
        else:
            self._nc = nats
        try:
            await self._start_session(max_pub_acks_inflight, ping_interval, ping_max_out)
        except BaseException:
            await self._teardown()
            await self._close_own_nats()
            self._state = _CLOSED
            raise
        self._state = _CONNECTED
        log.info("client=%s cluster=%s connected", client_id, cluster_id)

    async def _start_session(
        self, max_pub_acks_inflight: int, ping_interval: float, ping_max_out: int
    ) -> None:
        nc = self._nc
        nuid = NUID()
        self._conn_id = bytes(nuid.next())
        self._guid_base = nuid.next().decode()
        self._pub_acks = PubAckTracker(max_pub_acks_inflight)

        self._hb_inbox = nc.new_inbox()
        # PubAcks come under our inbox prefix, not on _STAN.acks.<nuid> as in
        # the official clients: where each identity may read only its own
        # inboxes, nobody else sees them (docs/security-design.md).
        self._ack_subject = nc.new_inbox()
        self._ping_inbox = nc.new_inbox()
        for subject, cb in (
            (self._hb_inbox, self._process_heartbeats),
            (self._ack_subject + ".*", self._process_ack),
            (self._ping_inbox, self._process_ping_response),
        ):
            self._internal_subs.append(await nc.subscribe(subject, cb=cb))

        req = pb.ConnectRequest(
            client_id=self._client_id,
            heartbeat_inbox=self._hb_inbox,
            protocol=PROTOCOL_ONE,
            conn_id=self._conn_id,
            ping_interval=ping_interval_wire(ping_interval),
            ping_max_out=ping_max_out,
        )
        discover = f"{DEFAULT_DISCOVER_PREFIX}.{self._cluster_id}"
        resp = await self._connect_request(discover, req)
        if resp.error:
            if "already registered" in resp.error:
                raise ErrDuplicateClientID(resp.error)
            raise ErrConnectRejected(resp.error)
        self._apply_connect_response(resp)
        self._pub_msg = pb.PubMsg(client_id=self._client_id, conn_id=self._conn_id)

        if resp.protocol >= PROTOCOL_ONE and resp.ping_requests:
            # The server's values win when it sends them (as in stan.go).
            interval = ping_interval
            if resp.ping_interval:
                interval = ping_interval_from_wire(resp.ping_interval)
            max_out = resp.ping_max_out or ping_max_out
            self._pinger = Pinger(
                nc,
                self._client_id,
                self._ping_req_subject,
                self._ping_inbox,
                self._conn_id,
                interval,
                max_out,
                self._on_connection_lost,
            )
            self._pinger.start()

    def _apply_connect_response(self, resp: pb.ConnectResponse) -> None:
        required = {
            "pub_prefix": resp.pub_prefix,
            "sub_requests": resp.sub_requests,
            "unsub_requests": resp.unsub_requests,
            "close_requests": resp.close_requests,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise ErrServerResponse(f"stan: connect response lacks {', '.join(missing)}")
        self._pub_prefix = resp.pub_prefix
        self._sub_req_subject = resp.sub_requests
        self._unsub_req_subject = resp.unsub_requests
        self._close_req_subject = resp.close_requests
        self._sub_close_req_subject = resp.sub_close_requests
        self._ping_req_subject = resp.ping_requests

    # --- requests -------------------------------------------------------------

    async def _connect_request(self, subject: str, req) -> pb.ConnectResponse:
        """The ConnectRequest, asked up to connect_attempts times while it times
        out. Same conn_id and heartbeat inbox each time: a server that
        registered an earlier attempt answers with that session, not a
        duplicate. No responders means no server: not asked again."""
        for attempt in range(self._connect_attempts):
            try:
                msg = await self._nc.request(
                    subject, req.SerializeToString(), timeout=self._connect_timeout
                )
                break
            except NatsTimeoutError:
                if attempt + 1 < self._connect_attempts:
                    log.info("client=%s connect request timed out; asking again (%d/%d)",
                             self._client_id, attempt + 2, self._connect_attempts)
                    continue
            except NoRespondersError:
                pass
            except ConnectionClosedError:
                raise ErrConnectionClosed() from None
            raise ErrConnectReqTimeout(
                f"stan: failed connecting to '{self._cluster_id}' (connect request timeout)"
            ) from None
        resp = decode(pb.ConnectResponse, msg.data, f"client={self._client_id} subject={subject}")
        if resp is None:
            raise ErrServerResponse("stan: malformed ConnectResponse from server")
        return resp

    async def _request(self, subject: str, req, resp_cls, timeout_error: type[ErrTimeoutError]):
        """Send a protocol request; map transport failures to STAN errors."""
        try:
            msg = await self._nc.request(
                subject, req.SerializeToString(), timeout=self._connect_timeout
            )
        except (NatsTimeoutError, NoRespondersError):
            # No responders means no server for this cluster/subject: to the
            # caller that is the same as the request timing out (stan.py).
            raise timeout_error() from None
        except ConnectionClosedError:
            raise ErrConnectionClosed() from None
        resp = decode(resp_cls, msg.data, f"client={self._client_id} subject={subject}")
        if resp is None:
            raise ErrServerResponse(f"stan: malformed {resp_cls.__name__} from server")
        return resp

    def _check_connected(self) -> None:
        if self._state != _CONNECTED:
            raise ErrConnectionClosed() if self._state == _CLOSED else ErrBadConnection()

    # --- inbound protocol traffic ----------------------------------------------

    async def _process_heartbeats(self, msg) -> None:
        """STAN heartbeat: the server asks, an empty reply proves we are alive."""
        if not msg.reply:
            return
        try:
            await self._nc.publish(msg.reply, b"")
        except NatsError as exc:
            log.debug("client=%s heartbeat reply failed err=%s", self._client_id, exc)

    async def _process_ack(self, msg) -> None:
        """PubAcks for all our publishes arrive here, on <ack_subject>.<guid>."""
        tracker = self._pub_acks
        if tracker is None:
            return
        guid_from_subject = msg.subject[len(self._ack_subject) + 1 :]
        if is_no_responders(msg):
            await tracker.resolve(guid_from_subject, ErrNoResponders(guid=guid_from_subject))
            return
        ack = decode(pb.PubAck, msg.data, f"client={self._client_id} pub ack")
        if ack is None:
            return  # the publish times out after ack_wait
        await tracker.resolve(ack.guid or guid_from_subject, ack)

    async def _process_ping_response(self, msg) -> None:
        if self._pinger is not None:
            self._pinger.on_response(msg)

    # --- publish -------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        ack_handler: AckHandler | None = None,
        ack_wait: float = DEFAULT_ACK_WAIT,
        attempts: int = 1,
    ) -> pb.PubAck | None:
        """Publish ``payload`` on channel ``subject``.

        Without ``ack_handler``: wait for the PubAck and return it; raise
        ErrPublishRejected if the server refused, ErrTimeout after ``ack_wait``.
        With ``ack_handler``: return None once sent; the handler later gets the
        PubAck, or an ErrTimeout / ErrConnectionClosed carrying the guid.
        Blocks while ``max_pub_acks_inflight`` publishes await their ack.
        ``attempts`` > 1 (without a handler) sends it again, with the same guid
        (stored once), when its PubAck did not come within ``ack_wait``: a store
        sent while the channel's stream elects a leader gets no answer at all.
        """
        self._check_connected()
        if not subject or "*" in subject or ">" in subject:
            raise ErrInvalidOption(f"stan: invalid subject {subject!r}")
        if ack_wait <= 0:
            raise ErrInvalidOption(f"stan: ack_wait must be > 0, got {ack_wait!r}")
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        tracker = self._pub_acks
        await tracker.reserve()
        if self._state != _CONNECTED:  # closed while we waited for a slot
            tracker.unreserve()
            self._check_connected()

        self._guid_seq += 1
        guid = f"{self._guid_base}{self._guid_seq}"
        pe = self._pub_msg
        pe.guid = guid
        pe.subject = subject
        pe.data = payload
        data = pe.SerializeToString()
        attempts = max(1, attempts) if ack_handler is None else 1
        for attempt in range(attempts):
            if attempt:  # the timed-out attempt gave its slot back
                await tracker.reserve()
                if self._state != _CONNECTED:
                    tracker.unreserve()
                    self._check_connected()
                log.info("guid=%s had no PubAck in %ss; sent again", guid, ack_wait)
            future = tracker.add(guid, ack_wait, ack_handler)
            try:
                await self._nc.publish(
                    f"{self._pub_prefix}.{subject}", data, reply=f"{self._ack_subject}.{guid}"
                )
            except BaseException as exc:
                tracker.pop(guid)
                if isinstance(exc, ConnectionClosedError):
                    raise ErrConnectionClosed() from None
                raise
            if future is None:
                return None
            try:
                ack = await future
            except asyncio.CancelledError:
                tracker.pop(guid)
                raise
            except ErrTimeout:
                if attempt + 1 == attempts:
                    raise
                continue
            if ack.error:
                raise ErrPublishRejected(ack.error, ack)
            return ack

    # --- subscribe -----------------------------------------------------------------

    async def subscribe(
        self,
        subject: str,
        cb: MsgHandler | None = None,
        error_cb: ErrorHandler | None = None,
        start_at: str | None = None,
        deliver_all_available: bool = False,
        sequence: int | None = None,
        time: float | None = None,
        manual_acks: bool = False,
        queue: str | None = None,
        ack_wait: int = DEFAULT_ACK_WAIT,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        durable_name: str | None = None,
        pending_limits: int = DEFAULT_PENDING_LIMIT,
    ) -> Subscription:
        """Subscribe to channel ``subject``; ``cb(msg)`` gets each message.

        ``start_at`` is one of 'new_only' (default), 'last_received', 'time'
        (with ``time`` in unix seconds), 'sequence' (with ``sequence``) or
        'first'; ``deliver_all_available=True`` means 'first'. Unless
        ``manual_acks``, each message is acked after ``cb`` returns.
        """
        self._check_connected()
        if cb is None or not callable(cb):
            raise ErrInvalidOption("stan: subscribe needs a callback (cb=)")
        if (
            isinstance(pending_limits, bool)
            or not isinstance(pending_limits, int)
            or (pending_limits < 1)
        ):
            raise ErrInvalidOption(f"stan: pending_limits must be >= 1, got {pending_limits!r}")
        sub = Subscription(
            self, subject, cb, error_cb, queue, durable_name, manual_acks, pending_limits
        )
        req = build_subscription_request(
            self._client_id,
            subject,
            sub.inbox,
            queue=queue,
            durable_name=durable_name,
            start_at=start_at,
            deliver_all_available=deliver_all_available,
            sequence=sequence,
            time=time,
            ack_wait=ack_wait,
            max_inflight=max_inflight,
        )
        self._sub_map[sub.inbox] = sub
        try:
            await sub._listen()
            resp = await self._request(
                self._sub_req_subject, req, pb.SubscriptionResponse, ErrSubReqTimeout
            )
            if resp.error:
                raise ErrSubscriptionRejected(resp.error)
            if not resp.ack_inbox:
                raise ErrServerResponse("stan: subscription response without ack_inbox")
        except BaseException:
            self._forget(sub)
            await sub._detach()
            raise
        sub._activate(resp.ack_inbox)
        log.debug("client=%s channel=%s inbox=%s subscribed", self._client_id, subject, sub.inbox)
        return sub

    def _forget(self, sub: Subscription) -> None:
        self._sub_map.pop(sub.inbox, None)

    async def ack(self, msg: Msg) -> None:
        """Acknowledge ``msg`` on its subscription (for ``manual_acks``)."""
        if msg.sub is None:
            raise ErrInvalidOption("stan: message does not belong to a subscription")
        await msg.sub.ack(msg)

    # --- close and connection loss ---------------------------------------------------

    async def close(self) -> None:
        """End the session: CloseRequest, drop subscriptions (durables are
        kept by the server), and close the NATS connection if we own it."""
        self._check_connected()
        self._state = _CLOSED
        try:
            await self._teardown()
            req = pb.CloseRequest(client_id=self._client_id)
            resp = await self._request(
                self._close_req_subject, req, pb.CloseResponse, ErrCloseReqTimeout
            )
            if resp.error:
                raise ErrCloseRejected(resp.error)
        finally:
            await self._close_own_nats()
        log.info("client=%s closed", self._client_id)

    async def _teardown(self) -> None:
        """Release everything local to the session; sends nothing to the server."""
        if self._pinger is not None:
            self._pinger.stop()
            self._pinger = None
        subs = list(self._sub_map.values())
        self._sub_map.clear()
        for sub in subs:
            await sub._detach()
        internal, self._internal_subs = self._internal_subs, []
        for nsub in internal:
            try:
                await nsub.unsubscribe()
            except NatsError:
                pass  # the NATS connection is already closed
        if self._pub_acks is not None:
            self._pub_acks.fail_all(lambda guid: ErrConnectionClosed(guid=guid))

    async def _close_own_nats(self) -> None:
        if self._owns_nc and self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.close()
            except NatsError as exc:
                log.debug("client=%s closing NATS failed err=%s", self._client_id, exc)

    def _on_connection_lost(self, error: StanError) -> None:
        if self._state != _CONNECTED:
            return
        # Closed at once, so publish/subscribe fail fast from now on.
        self._state = _CLOSED
        self._lost_task = asyncio.get_running_loop().create_task(self._lose(error))

    async def _lose(self, error: StanError) -> None:
        await self._teardown()
        await self._close_own_nats()
        log.warning("client=%s connection lost: %s", self._client_id, error)
        if self._conn_lost_cb is None:
            return
        try:
            result = self._conn_lost_cb(error)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("client=%s conn_lost_cb raised", self._client_id)


def _as_bytes(payload) -> bytes:
    """Protobuf bytes fields take only ``bytes``; accept any bytes-like payload."""
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise ErrInvalidOption(f"stan: payload must be bytes, got {type(payload).__name__}")


async def _open_nats(servers: list[str] | str | None, nats_kwargs: dict[str, Any] | None) -> NATS:
    options = dict(nats_kwargs or {})
    options["servers"] = servers or DEFAULT_SERVERS
    ordered_flush.install()  # the session's flush() round trips, in order
    try:
        return await nats.connect(**options)
    except (NatsError, OSError) as exc:
        raise ErrBadConnection(f"stan: cannot connect to NATS: {exc}") from exc


__all__ = ["DEFAULT_SERVERS", "Client"]
