# A STAN session's requests to the server (stan.py): open the session,
# subscribe, unsubscribe (close stays in stan.py). They are made at connect
# and when a lost session is renewed, never in between, so stan.py loads
# this module for one and drops it after: as a .mpy file its code would take
# about 1.5 KB of a connected device's heap.

import asyncio
import gc

import nats
import pb
import stan
from micropython import const

# stan.py's slots of a subscription (_S_*) and of the ConnectResponse kept
# (_R_*): a const() with a leading underscore is not a module attribute in
# MicroPython, so the indexes used here are repeated; keep them in step.
_S_INBOX = const(0)
_S_CHANNEL = const(1)
_S_REQ = const(3)
_S_ACK_INBOX = const(5)
_PROTOCOL = const(1)
_R_SUB = const(1)
_R_UNSUB = const(2)
_R_SUBCLOSE = const(4)


async def session(sc):
    nc = sc.nc
    # A fresh heartbeat inbox each time: if the server still holds our old
    # session, its liveness check on the old inbox goes unanswered and the
    # old session is replaced instead of the new one being rejected.
    # A fresh ping inbox too, so late answers to the old session's pings
    # (errors, once it is gone) cannot end the new one.
    if sc._hb is not None:
        nc.unsubscribe(sc._hb)
        nc.unsubscribe(sc._ping_sub)
    hb = nc.new_inbox()
    sc._hb = nc.subscribe(hb, sc._on_hb)
    sc._ping_sub = nc.subscribe(nc.new_inbox(), sc._on_ping_resp)
    sc._conn_id = nats._rand_hex(11).encode()
    req = pb.encode(
        pb.ConnectRequest,
        {
            "client_id": sc._id,
            "heartbeat_inbox": hb,
            "protocol": _PROTOCOL,
            "conn_id": sc._conn_id,
            "ping_interval": sc._c("ping_interval"),
            "ping_max_out": sc._c("ping_max_out"),
        },
    )
    subject = "%s.%s" % (sc._c("discover_prefix"), sc._c("cluster_id"))
    try:
        m = await nc.request(subject, req, sc._c("connect_timeout"))
    except asyncio.TimeoutError:
        # Asked once more as the same session (conn_id, heartbeat inbox): the
        # server joins a registration still in progress, or answers with the
        # session it registered after we gave up. A new conn_id would make it
        # check the old session first, and replace it (a storm's worst case).
        m = await nc.request(subject, req, sc._c("connect_timeout"))
    r = pb.decode(pb.ConnectResponse, m.data)
    if r["error"]:
        raise stan.StanError(r["error"])
    sc._resp = tuple(r[k] for k in stan._R_FIELDS)
    r = m = None
    sc._ping_data = pb.encode(pb.Ping, {"conn_id": sc._conn_id})
    sc._pings_out = 0
    sc.sessions += 1
    sc._lost_ev.clear()
    gc.collect()  # request/response buffers of the connect are garbage now
    sc._up.set()
    sc._log("stan event=session client=%s sessions=%d" % (sc._id, sc.sessions))


async def subscribe(sc, s):
    durable, queue, ack_wait, max_inflight, start, start_seq = s[_S_REQ]
    req = pb.encode(
        pb.SubscriptionRequest,
        {
            "client_id": sc._id,
            "subject": s[_S_CHANNEL],
            "q_group": queue,
            "inbox": s[_S_INBOX],
            "max_in_flight": max_inflight,
            "ack_wait_in_secs": ack_wait,
            "durable_name": durable,
            "start_position": start,
            "start_sequence": start_seq,
        },
    )
    try:
        m = await sc.nc.request(sc._resp[_R_SUB], req, sc._c("connect_timeout"))
    except asyncio.TimeoutError:
        if not durable or queue:
            raise
        # Asked once more, the same (same inbox): the server may have registered
        # the durable after we gave up, and answers a repeat with it, where a
        # new inbox would be refused as a duplicate durable and cost a session.
        m = await sc.nc.request(sc._resp[_R_SUB], req, sc._c("connect_timeout"))
    r = pb.decode(pb.SubscriptionResponse, m.data)
    if r["error"]:
        raise stan.StanError(r["error"])
    s[_S_ACK_INBOX] = r["ack_inbox"]
    sc._dev.set()  # messages that arrived before the response can go now


async def unsubscribe(sc, s, close):
    req = pb.encode(
        pb.UnsubscribeRequest,
        {"client_id": sc._id, "subject": s[_S_CHANNEL], "inbox": s[_S_ACK_INBOX],
         "durable_name": s[_S_REQ][0]},
    )
    m = await sc.nc.request(sc._resp[_R_SUBCLOSE if close else _R_UNSUB], req,
                            sc._c("connect_timeout"))
    err = pb.decode(pb.SubscriptionResponse, m.data)["error"]
    if err:
        raise stan.StanError(err)

