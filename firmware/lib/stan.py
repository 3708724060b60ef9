# Minimal NATS Streaming (STAN) client on top of nats.Client (docs/STAN-PROTOCOL.md).
#
#   nc = nats.Client(ncfg); await nc.connect()
#   sc = stan.Stan(nc, {"cluster_id": "test-cluster", "client_id": "dev-3F45"})
#   await sc.connect()
#   await sc.publish("devices.3F45.events", b"...")      # returns after the PubAck
#   sub = await sc.subscribe("devices.3F45.cfg", cb, durable="cfg")
#   await sc.ack(msg)                                    # in or after cb(msg)
#
# A lost session (PingResponse with an error, e.g. "client has been replaced",
# or ping_max_out pings unanswered) is handled in one place, _keep(): it opens
# a new session with a fresh heartbeat inbox and conn_id, then re-issues every
# subscription request. Durables resume after their last acked message and
# get their unacked messages redelivered; other subscriptions start again
# from their original start position.

import asyncio
import gc

import nats
import pb
from micropython import const

DEFAULTS = {
    "cluster_id": "test-cluster",
    "client_id": None,  # required; [A-Za-z0-9_-]+
    "discover_prefix": "_STAN.discover",
    "connect_timeout": 5,  # s per discover / subscription / close request
    "pub_ack_timeout": 30,  # s
    "max_pub_acks_inflight": 8,  # a device needs few; the STAN default is 16384
    "ping_interval": 5,  # s, proposed to the server, which may override it
    "ping_max_out": 3,
    "renew_min_ms": 500,  # backoff between attempts to open a new session
    "renew_max_ms": 30000,
    "log": None,  # callable(str); default print
    "on_session": None,  # callable(renewed: bool) after (re)subscribing
    "on_session_lost": None,  # callable(reason: str)
}

_PROTOCOL = const(1)


class StanError(Exception):
    pass


class StanMsg:
    def __init__(self, d, sub):
        self.sequence = d["sequence"]
        self.subject = d["subject"]  # the channel
        self.data = d["data"]
        self.timestamp = d["timestamp"]  # ns since the epoch
        self.redelivered = d["redelivered"]
        self.redelivery_count = d["redelivery_count"]
        self.sub = sub


class Subscription:
    def __init__(self, inbox, channel, cb, durable, queue, manual_acks, ack_wait, max_inflight,
                 start, start_seq):
        self.channel = channel
        self.cb = cb
        self.durable = durable
        self.queue = queue
        self.manual_acks = manual_acks
        self.ack_wait = ack_wait
        self.max_inflight = max_inflight
        self.start = start
        self.start_seq = start_seq
        self.inbox = inbox
        self.ack_inbox = None
        self.nsub = None
        self.task = None
        self.pending = []
        self.ev = asyncio.Event()
        self.dropped = 0


class Stan:
    def __init__(self, nc, cfg):
        c = dict(DEFAULTS)
        c.update(cfg)
        if not c["client_id"]:
            raise ValueError("client_id required")
        self.cfg = c
        self.nc = nc
        self._log = c["log"] or print
        self._resp = None  # ConnectResponse dict of the current session
        self._conn_id = b""
        self._hb = None
        self._up = asyncio.Event()
        self._lost_ev = asyncio.Event()
        self._lost_reason = None
        self._closed = False
        self._subs = []
        self._pubs = {}  # guid -> [Event, error or None]
        self._inflight = 0
        self._slot = asyncio.Event()
        self._guid_pfx = nats._rand_hex(8)
        self._guid_n = 0
        # PubAcks come to an inbox under our prefix (official clients use
        # _STAN.acks.<random>): with per-identity inboxes nobody else can read them.
        self._ack_subject = nc.new_inbox()
        self._ack_sub = None
        self._ping_sub = None
        self._ping_data = None
        self._pings_out = 0
        self._tasks = ()
        self.sessions = 0

    # ---- session -----------------------------------------------------------------

    async def connect(self):
        """Open the first session. Raises StanError (e.g. clientID already
        registered) or asyncio.TimeoutError (no streaming server)."""
        nc = self.nc
        if self._ack_sub is None:  # once: connect() may be retried on the same object
            self._ack_sub = nc.subscribe(self._ack_subject, self._on_puback)
        await self._session()
        self._tasks = (asyncio.create_task(self._keep()), asyncio.create_task(self._pinger()))

    async def _session(self):
        c = self.cfg
        nc = self.nc
        # A fresh heartbeat inbox each time: if the server still holds our old
        # session, its liveness check on the old inbox goes unanswered and the
        # old session is replaced instead of the new one being rejected.
        # A fresh ping inbox too, so late answers to the old session's pings
        # (errors, once it is gone) cannot end the new one.
        if self._hb is not None:
            nc.unsubscribe(self._hb)
            nc.unsubscribe(self._ping_sub)
        hb = nc.new_inbox()
        self._hb = nc.subscribe(hb, self._on_hb)
        self._ping_sub = nc.subscribe(nc.new_inbox(), self._on_ping_resp)
        self._conn_id = nats._rand_hex(11).encode()
        req = pb.encode(
            pb.ConnectRequest,
            {
                "client_id": c["client_id"],
                "heartbeat_inbox": hb,
                "protocol": _PROTOCOL,
                "conn_id": self._conn_id,
                "ping_interval": c["ping_interval"],
                "ping_max_out": c["ping_max_out"],
            },
        )
        subject = "%s.%s" % (c["discover_prefix"], c["cluster_id"])
        m = await nc.request(subject, req, c["connect_timeout"])
        r = pb.decode(pb.ConnectResponse, m.data)
        if r["error"]:
            raise StanError(r["error"])
        self._resp = r
        self._ping_data = pb.encode(pb.Ping, {"conn_id": self._conn_id})
        self._pings_out = 0
        self.sessions += 1
        self._lost_ev.clear()
        gc.collect()  # request/response buffers of the connect are garbage now
        self._up.set()
        self._log("stan event=session client=%s sessions=%d" % (c["client_id"], self.sessions))

    def _lost(self, reason):
        # The one place a dead session is recorded; _keep() renews it.
        if self._up.is_set():
            self._up.clear()
            self._lost_reason = reason
            self._lost_ev.set()

    async def _keep(self):
        c = self.cfg
        from random import getrandbits

        while True:
            await self._lost_ev.wait()
            self._log("stan event=session_lost client=%s reason=%s"
                      % (c["client_id"], self._lost_reason))
            if c["on_session_lost"]:
                c["on_session_lost"](self._lost_reason)
            delay = c["renew_min_ms"]
            while True:
                try:
                    await self._session()
                    for s in self._subs:
                        await self._sub_request(s)
                    break
                except (StanError, asyncio.TimeoutError, nats.NatsError, ValueError) as e:
                    self._up.clear()
                    self._log("stan event=renew_failed error=%r delay_ms=%d" % (e, delay))
                await asyncio.sleep_ms(delay // 2 + getrandbits(16) % (delay // 2 + 1))
                delay = min(delay * 2, c["renew_max_ms"])
            if c["on_session"]:
                c["on_session"](True)

    async def _pinger(self):
        # Protocol 1 pings. Counting before sending, as stan.go does: the
        # session is lost when more than ping_max_out are unanswered.
        while True:
            r = self._resp
            await asyncio.sleep(r["ping_interval"] or self.cfg["ping_interval"])
            if not self._up.is_set():
                continue
            self._pings_out += 1
            if self._pings_out > (r["ping_max_out"] or self.cfg["ping_max_out"]):
                self._lost("ping_timeout")
                continue
            try:
                self.nc.publish(r["ping_requests"], self._ping_data, self._ping_sub.subject)
            except nats.NatsError:
                pass  # buffer full while NATS reconnects: counts as a missed ping

    def _on_ping_resp(self, m):
        try:
            err = pb.decode(pb.PingResponse, m.data)["error"]
        except ValueError:
            return
        if err:
            self._lost(err)
        else:
            self._pings_out = 0

    def _on_hb(self, m):
        if m.reply:
            try:
                self.nc.publish(m.reply, b"")
            except nats.NatsError:
                pass

    async def close(self):
        """Close the session (durables are kept) and drop all subscriptions,
        the session's NATS inboxes included: a closed Stan leaves nothing
        subscribed on the NATS client, which may carry a new session."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        nc = self.nc
        for s in self._subs:
            if s.task:
                s.task.cancel()
            nc.unsubscribe(s.nsub)
        self._subs.clear()  # in place: see nats.Client.close()
        r = self._resp
        self._up.clear()
        try:
            if r is not None:  # a session was opened: the server holds it
                req = pb.encode(pb.CloseRequest, {"client_id": self.cfg["client_id"]})
                m = await nc.request(r["close_requests"], req, self.cfg["connect_timeout"])
                err = pb.decode(pb.CloseResponse, m.data)["error"]
                if err:
                    raise StanError(err)
        finally:
            for sub in (self._hb, self._ping_sub, self._ack_sub):
                if sub is not None:
                    nc.unsubscribe(sub)
            self._hb = self._ping_sub = self._ack_sub = None

    # ---- publish -----------------------------------------------------------------

    async def publish(self, channel, data, guid=None):
        """Store ``data`` on ``channel``; returns the guid after the PubAck.
        Raises StanError (server error) or asyncio.TimeoutError. Retrying with
        the guid of an attempt that timed out stores the message once: the
        server deduplicates by guid."""
        return await asyncio.wait_for(self._publish(channel, data, guid),
                                      self.cfg["pub_ack_timeout"])

    def new_guid(self):
        self._guid_n += 1
        return "%s%x" % (self._guid_pfx, self._guid_n)

    async def _publish(self, channel, data, guid):
        await self._up.wait()
        while self._inflight >= self.cfg["max_pub_acks_inflight"]:
            self._slot.clear()
            await self._slot.wait()
        self._inflight += 1
        guid = guid or self.new_guid()
        w = [asyncio.Event(), None]
        self._pubs[guid] = w
        try:
            c = self.cfg
            m = pb.encode(
                pb.PubMsg,
                {"client_id": c["client_id"], "guid": guid, "subject": channel, "data": data,
                 "conn_id": self._conn_id},
            )
            self.nc.publish(self._resp["pub_prefix"] + "." + channel, m, self._ack_subject)
            m = None
            await w[0].wait()
            if w[1]:
                raise StanError(w[1])
            return guid
        finally:
            del self._pubs[guid]
            self._inflight -= 1
            self._slot.set()

    def _on_puback(self, m):
        try:
            a = pb.decode(pb.PubAck, m.data)
        except ValueError:
            return
        w = self._pubs.get(a["guid"])
        if w is not None:
            w[1] = a["error"]
            w[0].set()

    # ---- subscribe -----------------------------------------------------------------

    async def subscribe(
        self, channel, cb, durable=None, queue=None, manual_acks=True,
        ack_wait=30, max_inflight=1, start=pb.NEW_ONLY, start_seq=0,
    ):
        """cb(msg) may be a function or a coroutine function; messages of one
        subscription are handed to it one at a time, in order. With
        manual_acks the callback (or later code) must call ack(msg); without,
        the message is acked once cb returns without raising."""
        await asyncio.wait_for(self._up.wait(), self.cfg["connect_timeout"])
        s = Subscription(self.nc.new_inbox(), channel, cb, durable, queue, manual_acks, ack_wait,
                         max_inflight, start, start_seq)
        # Subscribe to the inbox before asking: delivery may start at once.
        s.nsub = self.nc.subscribe(s.inbox, lambda m: self._on_msg(s, m))
        try:
            await self._sub_request(s)
        except BaseException:
            self.nc.unsubscribe(s.nsub)
            raise
        self._subs.append(s)
        s.task = asyncio.create_task(self._deliver(s))
        return s

    async def _sub_request(self, s):
        c = self.cfg
        req = pb.encode(
            pb.SubscriptionRequest,
            {
                "client_id": c["client_id"],
                "subject": s.channel,
                "q_group": s.queue,
                "inbox": s.inbox,
                "max_in_flight": s.max_inflight,
                "ack_wait_in_secs": s.ack_wait,
                "durable_name": s.durable,
                "start_position": s.start,
                "start_sequence": s.start_seq,
            },
        )
        m = await self.nc.request(self._resp["sub_requests"], req, c["connect_timeout"])
        r = pb.decode(pb.SubscriptionResponse, m.data)
        if r["error"]:
            raise StanError(r["error"])
        s.ack_inbox = r["ack_inbox"]
        s.ev.set()  # messages that arrived before the response can go now

    def _on_msg(self, s, m):
        try:
            d = pb.decode(pb.MsgProto, m.data)
        except ValueError:
            self._log("stan event=bad_msg channel=%s" % s.channel)
            return
        q = s.pending
        if d["redelivered"]:
            seq = d["sequence"]
            for x in q:
                if x.sequence == seq:
                    return  # still waiting for the callback: one copy is enough
        # Bounded: the server limits unacked messages to max_inflight, so more
        # can only be redeliveries; a dropped one comes again after ack_wait.
        if len(q) >= s.max_inflight + 4:
            s.dropped += 1
            return
        q.append(StanMsg(d, s))
        s.ev.set()

    async def _deliver(self, s):
        q = s.pending
        while True:
            await s.ev.wait()
            s.ev.clear()
            while q and s.ack_inbox:
                msg = q.pop(0)
                try:
                    r = s.cb(msg)
                    if r is not None:
                        await r
                except Exception as e:  # the application's fault: no ack, so it comes again
                    self._log("stan event=callback_error channel=%s seq=%d error=%r"
                              % (s.channel, msg.sequence, e))
                    continue
                if not s.manual_acks:
                    self._send_ack(s, msg)

    async def ack(self, msg):
        """Acknowledge ``msg`` on its subscription's current ack inbox."""
        self._send_ack(msg.sub, msg)

    def _send_ack(self, s, msg):
        a = pb.encode(pb.Ack, {"subject": msg.subject, "sequence": msg.sequence})
        self.nc.publish(s.ack_inbox, a)

    async def unsubscribe(self, s, close=False):
        """Remove the subscription; for a durable, close=True keeps its state on the server."""
        self._subs.remove(s)
        if s.task:
            s.task.cancel()
        self.nc.unsubscribe(s.nsub)
        r = self._resp
        req = pb.encode(
            pb.UnsubscribeRequest,
            {"client_id": self.cfg["client_id"], "subject": s.channel, "inbox": s.ack_inbox,
             "durable_name": s.durable},
        )
        subject = r["sub_close_requests" if close else "unsub_requests"]
        m = await self.nc.request(subject, req, self.cfg["connect_timeout"])
        err = pb.decode(pb.SubscriptionResponse, m.data)["error"]
        if err:
            raise StanError(err)
