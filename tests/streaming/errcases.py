"""Requests whose replies carry an error, in one scenario run against any STAN
server: the differential test runs it against the Go reference binary and
ours and compares the replies (error text byte for byte, the fields that
matter)."""

from __future__ import annotations

import asyncio
import os

from nats import errors as nats_errors
from stanfleet.pb import protocol_pb2 as pb

from .rawstan import RawStan

CLUSTER = "test-cluster"
# The servers run with these limits, so the limit errors are reachable.
SERVER_FLAGS = ("-cid", CLUSTER, "-mc", "3", "-msu", "1")


NO_REPLY_WAIT = 2.0  # a request either server leaves unanswered


class _NoReply:
    error = "(no reply)"
    ack_inbox = ""


async def _request(nc, subject: str, msg, cls):
    return await _raw(nc, subject, msg.SerializeToString(), cls)


async def _raw(nc, subject: str, data: bytes, cls):
    try:
        r = await nc.request(subject, data, timeout=NO_REPLY_WAIT)
    except (nats_errors.NoRespondersError, nats_errors.TimeoutError, asyncio.TimeoutError):
        return _NoReply()
    except nats_errors.BadSubjectError:
        return _NoReply()
    return cls.FromString(r.data)


async def run(url: str) -> list[tuple[str, str]]:
    """(case, observed reply) for every case, in order."""
    out: list[tuple[str, str]] = []
    c = await RawStan.open(url, CLUSTER, "alice")
    nc = c.nc
    discover = f"_STAN.discover.{CLUSTER}"
    try:
        out.append(("connect", (await c.connect()).error))
        s = c.resp
        twin = RawStan(nc, CLUSTER, "alice")
        out.append(("connect: clientID taken by a live client", (await twin.connect()).error))
        for bad in ("", "a b", "a.b", "a*"):
            req = pb.ConnectRequest(client_id=bad, heartbeat_inbox="hb.x", protocol=1,
                                    conn_id=os.urandom(8))
            out.append((f"connect: client ID {bad!r}",
                        (await _request(nc, discover, req, pb.ConnectResponse)).error))
        req = pb.ConnectRequest(client_id="nohb", protocol=1, conn_id=os.urandom(8))
        out.append(("connect: no heartbeat inbox",
                    (await _request(nc, discover, req, pb.ConnectResponse)).error))
        out.append(("connect: garbage",
                    (await _raw(nc, discover, b"\xff\xff\xff", pb.ConnectResponse)).error))

        # publish
        out.append(("publish", (await c.publish("foo", b"1")).error))
        for bad in ("foo.*", "foo.>", "foo..bar", ".foo", "foo."):
            pm = pb.PubMsg(client_id="alice", guid="g-" + bad, subject=bad, data=b"x",
                           conn_id=c.conn_id)
            ack = await _request(nc, f"{s.pub_prefix}.{bad}", pm, pb.PubAck)
            out.append((f"publish: subject {bad!r}", ack.error))
        pm = pb.PubMsg(client_id="nobody", guid="g1", subject="foo", data=b"x")
        out.append(("publish: unknown client",
                    (await _request(nc, f"{s.pub_prefix}.foo", pm, pb.PubAck)).error))
        pm = pb.PubMsg(client_id="alice", guid="g2", subject="foo", data=b"x",
                       conn_id=b"not-this-session")
        out.append(("publish: replaced session (other conn_id)",
                    (await _request(nc, f"{s.pub_prefix}.foo", pm, pb.PubAck)).error))
        # A session replaced by a new connect of its clientID (the old one stopped
        # answering heartbeats), then publishing and pinging with its old conn_id.
        old = await RawStan.open(url, CLUSTER, "zed", answer_heartbeats=False)
        out.append(("connect: zed", (await old.connect()).error))
        new = RawStan(nc, CLUSTER, "zed")
        out.append(("connect: zed again, old one silent", (await new.connect()).error))
        out.append(("publish: replaced session", (await old.publish("foo", b"x")).error))
        out.append(("ping: replaced session", (await old.ping()).error))
        await old.nc.close()
        out.append(("publish: garbage",
                    (await _raw(nc, f"{s.pub_prefix}.foo", b"\xff\xff", pb.PubAck)).error))
        out.append(("publish: second channel", (await c.publish("bar", b"1")).error))
        out.append(("publish: third channel", (await c.publish("baz", b"1")).error))
        out.append(("publish: channel over -mc", (await c.publish("qux", b"1")).error))

        # subscribe
        def sub(**fields):
            fields.setdefault("client_id", "alice")
            fields.setdefault("subject", "foo")
            fields.setdefault("inbox", "in.x")
            fields.setdefault("max_in_flight", 10)
            fields.setdefault("ack_wait_in_secs", 30)
            return pb.SubscriptionRequest(**fields)

        async def subscribe(case: str, keep: bool = False, **fields):
            """A subscription that is accepted is removed again (unless `keep`), so
            the -msu 1 limit is reached only where a case means to reach it."""
            req = sub(**fields)
            resp = await _request(nc, s.sub_requests, req, pb.SubscriptionResponse)
            out.append((case, resp.error))
            if not resp.error and not keep:
                end = pb.UnsubscribeRequest(client_id="alice", subject=req.subject,
                                            inbox=resp.ack_inbox, durable_name=req.durable_name)
                gone = await _request(nc, s.unsub_requests, end, pb.SubscriptionResponse)
                assert gone.error == "", gone.error
            return resp

        await subscribe("subscribe: unknown client", client_id="nobody")
        await subscribe("subscribe: ack wait 0", ack_wait_in_secs=0)
        await subscribe("subscribe: max inflight 0", max_in_flight=0)
        await subscribe("subscribe: wildcard subject", subject="foo.*")
        await subscribe("subscribe: bad subject", subject="foo..bar")
        await subscribe("subscribe: start sequence past the end",
                        start_position=pb.SequenceStart, start_sequence=100)
        await subscribe("subscribe: negative time delta",
                        start_position=pb.TimeDeltaStart, start_time_delta=-1)
        await subscribe("subscribe: unknown start position", start_position=99)
        await subscribe("subscribe: durable name with a colon", durable_name="a:b",
                        subject="bar")
        good = await subscribe("subscribe: durable", keep=True, durable_name="dur",
                               inbox="in.d")
        await subscribe("subscribe: duplicate durable", durable_name="dur", inbox="in.d2")
        await subscribe("subscribe: over -msu", inbox="in.more")
        out.append(("subscribe: garbage",
                    (await _raw(nc, s.sub_requests, b"\xff\xff", pb.SubscriptionResponse)).error))

        # unsubscribe / close subscription
        async def end(case: str, request_subject: str, **fields) -> None:
            fields.setdefault("client_id", "alice")
            fields.setdefault("subject", "foo")
            req = pb.UnsubscribeRequest(**fields)
            resp = await _request(nc, request_subject, req, pb.SubscriptionResponse)
            out.append((case, resp.error))

        await end("unsubscribe: unknown client", s.unsub_requests, client_id="nobody",
                  inbox=good.ack_inbox)
        await end("unsubscribe: unknown subscription", s.unsub_requests, inbox="nope")
        await end("unsubscribe: wrong channel", s.unsub_requests, subject="bar",
                  inbox=good.ack_inbox)
        await end("subclose: unknown subscription", s.sub_close_requests, inbox="nope")
        out.append(("unsubscribe: garbage",
                    (await _raw(nc, s.unsub_requests, b"\xff\xff",
                                pb.SubscriptionResponse)).error))
        await end("unsubscribe", s.unsub_requests, inbox=good.ack_inbox, durable_name="dur")

        # ping
        ping = await _request(nc, s.ping_requests, pb.Ping(conn_id=b"unknown"),
                              pb.PingResponse)
        out.append(("ping: unknown connection", ping.error))
        out.append(("ping", (await c.ping()).error))

        # close
        out.append(("close: unknown client",
                    (await _request(nc, s.close_requests, pb.CloseRequest(client_id="nobody"),
                                    pb.CloseResponse)).error))
        out.append(("close: no client ID",
                    (await _request(nc, s.close_requests, pb.CloseRequest(),
                                    pb.CloseResponse)).error))
        out.append(("close: garbage",
                    (await _raw(nc, s.close_requests, b"\xff\xff", pb.CloseResponse)).error))
        out.append(("close", (await _request(nc, s.close_requests,
                                             pb.CloseRequest(client_id="alice"),
                                             pb.CloseResponse)).error))
        pm = pb.PubMsg(client_id="alice", guid="g3", subject="foo", data=b"x",
                       conn_id=c.conn_id)
        out.append(("publish: after close",
                    (await _request(nc, f"{s.pub_prefix}.foo", pm, pb.PubAck)).error))
        out.append(("ping: after close", (await c.ping()).error))
    except asyncio.TimeoutError:
        out.append(("(no reply)", "timeout"))
    finally:
        await nc.close()
    return out
