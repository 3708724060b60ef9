# Minimal NATS Streaming (STAN) client on top of nats.Client (docs/STAN-PROTOCOL.md).
#
#   nc = nats.Client(ncfg); await nc.connect()
#   sc = stan.Stan(nc, {"cluster_id": "test-cluster", "client_id": "dev-3F45"})
#   await sc.connect()
#   await sc.publish("devices.3F45.events", b"...")      # returns after the PubAck
#   sub = await sc.subscribe("devices.3F45.cfg", cb, durable="cfg")
#   await sc.ack(msg)                                    # in or after cb(msg)
#
# A lost session (a PingResponse with an error, e.g. "client has been replaced")
# is handled in one place, _keep(): it opens a new session with a fresh
# heartbeat inbox and conn_id, then re-issues every subscription request. Durables resume after their last acked message and
# get their unacked messages redelivered; other subscriptions start again
# from their original start position. A PubAck without error stands in for
# the ping of its interval (the server checks the session on every publish):
# a device publishing more often than ping_interval sends no pings.
#
# Lean by design (issue 16: a connected device's heap): a subscription is one
# list (the _S_* slots), not an object with a dict of attributes; one task
# delivers for every subscription, and one (_keep) both pings and renews, so
# a session costs two tasks whatever it subscribes; the ConnectResponse is
# kept as a tuple of the subjects used; cfg is the caller's dict, with
# DEFAULTS looked up, not copied.
#
# Long because the session, publish with PubAcks, and subscriptions with
# their redelivery rules share one session's state and its renewal.

import asyncio

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
    "ping_max_out": 3,  # unanswered pings before the server is logged silent (session kept)
    "renew_min_ms": 500,  # backoff between attempts to open a new session
    "renew_max_ms": 30000,
    "log": None,  # callable(str); default print
    "on_session": None,  # callable(renewed: bool) after (re)subscribing
    "on_session_lost": None,  # callable(reason: str)
}


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


# A subscription: a list of these slots (what subscribe() returns).
_S_INBOX = const(0)
_S_CHANNEL = const(1)
_S_CB = const(2)
_S_REQ = const(3)  # the SubscriptionRequest's fields: durable, queue, ack_wait, max_inflight, start, start_seq
_S_MANUAL = const(4)
_S_ACK_INBOX = const(5)  # None until the server accepted it
_S_NSUB = const(6)
_S_PENDING = const(7)

# The ConnectResponse fields kept, in this order (_R_* indexes).
_R_FIELDS = ("pub_prefix", "sub_requests", "unsub_requests", "close_requests",
             "sub_close_requests", "ping_requests", "ping_interval", "ping_max_out")
_R_PUB = const(0)
_R_SUB = const(1)
_R_UNSUB = const(2)
_R_CLOSE = const(3)
_R_SUBCLOSE = const(4)
_R_PING = const(5)
_R_PING_INTERVAL = const(6)
_R_PING_MAX_OUT = const(7)


class Stan:
    def __init__(self, nc, cfg):
        if not cfg.get("client_id"):
            raise ValueError("client_id required")
        self._cfg = cfg
        self.nc = nc
        self._id = cfg["client_id"]
        self._log = self._c("log") or print
        self._resp = None  # the current session's ConnectResponse: _R_FIELDS
        self._conn_id = b""
        self._hb = None
        self._up = asyncio.Event()
        self._lost_ev = asyncio.Event()
        self._dev = asyncio.Event()  # a subscription has messages to hand over
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
        self._heard = False  # a PubAck came since the last ping was due
        self._tasks = ()
        self.sessions = 0
        self.dropped = 0  # messages beyond a subscription's bound (they come again)

    def _c(self, key):
        return self._cfg.get(key, DEFAULTS[key])

    # ---- session -----------------------------------------------------------------

    async def connect(self):
        """Open the first session. Raises StanError (e.g. clientID already
        registered), nats.NatsError ("no responders": no streaming server) or
        asyncio.TimeoutError."""
        nc = self.nc
        if self._ack_sub is None:  # once: connect() may be retried on the same object
            self._ack_sub = nc.subscribe(self._ack_subject, self._on_puback)
        await self._session()
        self._tasks = (asyncio.create_task(self._keep()), asyncio.create_task(self._deliver()))

    async def _session(self):
        await _requests("session", self)

    def _lost(self, reason):
        # The one place a dead session is recorded; _keep() renews it.
        if self._up.is_set():
            self._up.clear()
            self._lost_reason = reason
            self._lost_ev.set()

    async def _keep(self):
        # The session's one housekeeping task: pings while the session is up
        # (protocol 1), renews it once lost.
        from random import getrandbits

        while True:
            r = self._resp
            try:
                await asyncio.wait_for(self._lost_ev.wait(),
                                       r[_R_PING_INTERVAL] or self._c("ping_interval"))
            except asyncio.TimeoutError:
                self._ping(r)
                continue
            self._log("stan event=session_lost client=%s reason=%s"
                      % (self._id, self._lost_reason))
            cb = self._c("on_session_lost")
            if cb:
                cb(self._lost_reason)
            delay = self._c("renew_min_ms")
            while True:
                try:
                    await self._session()
                    for s in self._subs:
                        if s[_S_ACK_INBOX]:  # one still being subscribed is subscribe()'s
                            await self._sub_request(s)
                    break
                except (StanError, asyncio.TimeoutError, nats.NatsError, ValueError) as e:
                    self._up.clear()
                    self._log("stan event=renew_failed error=%r delay_ms=%d" % (e, delay))
                await asyncio.sleep_ms(delay // 2 + getrandbits(16) % (delay // 2 + 1))
                delay = min(delay * 2, self._c("renew_max_ms"))
            cb = self._c("on_session")
            if cb:
                cb(True)

    def _ping(self, r):
        # Unlike stan.go, pings that go unanswered (more than ping_max_out) do
        # not end the session: the server is unreachable or overloaded, so a
        # new session could not be opened either, and a restarted server
        # restores its sessions; 10,000 devices asking for new ones at once
        # were what held such a server back. The answer to a later ping says
        # whether this session survived.
        if not self._up.is_set():
            return
        if self._heard:
            # A PubAck without error since the last tick: the server knows this
            # session (it checks client and conn_id on every publish). A device
            # publishing every interval then pings not at all: half the
            # requests of a fleet, and of each device's radio time.
            self._heard = False
            return
        self._pings_out += 1
        if self._pings_out == (r[_R_PING_MAX_OUT] or self._c("ping_max_out")) + 1:
            self._log("stan event=server_silent pings=%d" % (self._pings_out - 1))
        try:
            self.nc.publish(r[_R_PING], self._ping_data, self._ping_sub.subject)
        except nats.NatsError:
            pass  # buffer full while NATS reconnects: counts as a missed ping

    def _on_ping_resp(self, m):
        if m.data is None:
            return  # no responders: no answer, as a lost reply
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
            nc.unsubscribe(s[_S_NSUB])
        self._subs.clear()  # in place: see nats.Client.close()
        r = self._resp
        self._up.clear()
        try:
            if r is not None:  # a session was opened: the server holds it
                # Here, not in stan_requests: a device closes at its heap's
                # high point, where loading that module could fail.
                req = pb.encode(pb.CloseRequest, {"client_id": self._id})
                m = await nc.request(r[_R_CLOSE], req, self._c("connect_timeout"))
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
        Raises StanError (a server error, or "no responders": no streaming
        server) or asyncio.TimeoutError. Retrying with
        the guid of an attempt that timed out stores the message once: the
        server deduplicates by guid."""
        return await asyncio.wait_for(self._publish(channel, data, guid),
                                      self._c("pub_ack_timeout"))

    def new_guid(self):
        self._guid_n += 1
        return "%s%x" % (self._guid_pfx, self._guid_n)

    async def _publish(self, channel, data, guid):
        await self._up.wait()
        while self._inflight >= self._c("max_pub_acks_inflight"):
            self._slot.clear()
            await self._slot.wait()
        self._inflight += 1
        guid = guid or self.new_guid()
        w = [asyncio.Event(), None]
        self._pubs[guid] = w
        try:
            m = pb.encode(
                pb.PubMsg,
                {"client_id": self._id, "guid": guid, "subject": channel, "data": data,
                 "conn_id": self._conn_id},
            )
            self.nc.publish(self._resp[_R_PUB] + "." + channel, m, self._ack_subject)
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
        if m.data is None:
            # No responders: the streaming server is away. The status names
            # no guid, so every publish in flight learns it now.
            for w in self._pubs.values():
                if not w[0].is_set():
                    w[1] = "no responders"
                    w[0].set()
            return
        try:
            a = pb.decode(pb.PubAck, m.data)
        except ValueError:
            return
        w = self._pubs.get(a["guid"])
        if w is not None:
            w[1] = a["error"]
            w[0].set()
            if not a["error"]:
                self._heard = True
                self._pings_out = 0

    # ---- subscribe -----------------------------------------------------------------

    async def subscribe(
        self, channel, cb, durable=None, queue=None, manual_acks=True,
        ack_wait=30, max_inflight=1, start=pb.NEW_ONLY, start_seq=0,
    ):
        """cb(msg) may be a function or a coroutine function; messages of one
        subscription are handed to it one at a time, in order (one task
        delivers for all subscriptions: a callback that blocks holds the
        others). With manual_acks the callback (or later code) must call
        ack(msg); without, the message is acked once cb returns without
        raising. Returns the subscription, for unsubscribe()."""
        await asyncio.wait_for(self._up.wait(), self._c("connect_timeout"))
        s = [self.nc.new_inbox(), channel, cb,
             (durable, queue, ack_wait, max_inflight, start, start_seq), manual_acks, None,
             None, []]
        # Subscribe to the inbox before asking: delivery may start at once
        # (held in pending until the server's answer gives the ack inbox).
        s[_S_NSUB] = self.nc.subscribe(s[_S_INBOX], self._on_msg)
        self._subs.append(s)
        try:
            await self._sub_request(s)
        except BaseException:
            self.nc.unsubscribe(s[_S_NSUB])
            if s in self._subs:
                self._subs.remove(s)
            raise
        return s

    async def _sub_request(self, s):
        await _requests("subscribe", self, s)

    def _on_msg(self, m):
        for s in self._subs:
            if s[_S_INBOX] == m.subject:
                break
        else:
            return  # unsubscribed meanwhile
        try:
            d = pb.decode(pb.MsgProto, m.data)
        except ValueError:
            self._log("stan event=bad_msg channel=%s" % s[_S_CHANNEL])
            return
        q = s[_S_PENDING]
        if d["redelivered"]:
            seq = d["sequence"]
            for x in q:
                if x.sequence == seq:
                    return  # still waiting for the callback: one copy is enough
        # Bounded: the server limits unacked messages to max_inflight, so more
        # can only be redeliveries; a dropped one comes again after ack_wait.
        if len(q) >= s[_S_REQ][3] + 4:
            self.dropped += 1
            return
        q.append(StanMsg(d, s))
        self._dev.set()

    async def _deliver(self):
        # One task for every subscription, each one's messages in order.
        ev = self._dev
        subs = self._subs
        while True:
            await ev.wait()
            ev.clear()
            i = 0
            while i < len(subs):
                s = subs[i]
                i += 1
                q = s[_S_PENDING]
                while q and s[_S_ACK_INBOX]:
                    msg = q.pop(0)
                    try:
                        r = s[_S_CB](msg)
                        if r is not None:
                            await r
                    except Exception as e:  # the application's fault: no ack, so it comes again
                        self._log("stan event=callback_error channel=%s seq=%d error=%r"
                                  % (s[_S_CHANNEL], msg.sequence, e))
                        continue
                    if not s[_S_MANUAL]:
                        self._send_ack(s, msg)
                    msg = r = None

    async def ack(self, msg):
        """Acknowledge ``msg`` on its subscription's current ack inbox."""
        self._send_ack(msg.sub, msg)

    def _send_ack(self, s, msg):
        a = pb.encode(pb.Ack, {"subject": msg.subject, "sequence": msg.sequence})
        self.nc.publish(s[_S_ACK_INBOX], a)

    async def unsubscribe(self, s, close=False):
        """Remove the subscription; for a durable, close=True keeps its state on the server."""
        self._subs.remove(s)
        self.nc.unsubscribe(s[_S_NSUB])
        await _requests("unsubscribe", self, s, close)


async def _requests(name, *args):
    # A session's requests to the server (open, subscribe, unsubscribe,
    # close) are made at connect and renewal only: their code lives in
    # stan_requests, loaded for one and dropped after.
    import stan_requests

    try:
        await getattr(stan_requests, name)(*args)
    finally:
        stan_requests = None
        nats._drop("stan_requests")
