"""A bare STAN peer for server tests: raw protobuf over nats-py, no client
library in between, so tests control every field (and can send garbage)."""

from __future__ import annotations

import asyncio
import os

import nats
from stanfleet.pb import protocol_pb2 as pb

TIMEOUT = 10


class RawStan:
    def __init__(self, nc, cluster_id: str, client_id: str):
        self.nc = nc
        self.cluster_id = cluster_id
        self.client_id = client_id
        self.conn_id = os.urandom(8)
        self.hb_inbox = f"hb.{client_id}.{self.conn_id.hex()}"
        self.resp: pb.ConnectResponse | None = None
        self.hb_sub = None

    @classmethod
    async def open(cls, url: str, cluster_id: str, client_id: str, *, answer_heartbeats=True,
                   reconnected_cb=None):
        # Several comma-separated URLs: servers of one cluster; keep reconnecting.
        nc = await nats.connect(servers=url.split(","), max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2, reconnected_cb=reconnected_cb)
        c = cls(nc, cluster_id, client_id)
        if answer_heartbeats:
            c.hb_sub = await nc.subscribe(c.hb_inbox, cb=c._on_hb)
        return c

    async def _on_hb(self, msg):
        await msg.respond(b"")

    async def connect(self) -> pb.ConnectResponse:
        req = pb.ConnectRequest(client_id=self.client_id, heartbeat_inbox=self.hb_inbox,
                                protocol=1, conn_id=self.conn_id, ping_interval=5, ping_max_out=3)
        r = await self.nc.request(f"_STAN.discover.{self.cluster_id}", req.SerializeToString(),
                                  timeout=TIMEOUT)
        self.resp = pb.ConnectResponse.FromString(r.data)
        return self.resp

    async def publish(self, channel: str, data: bytes, guid: str | None = None) -> pb.PubAck:
        guid = guid or os.urandom(8).hex()
        pm = pb.PubMsg(client_id=self.client_id, guid=guid, subject=channel, data=data,
                       conn_id=self.conn_id)
        r = await self.nc.request(f"{self.resp.pub_prefix}.{channel}", pm.SerializeToString(),
                                  timeout=TIMEOUT)
        return pb.PubAck.FromString(r.data)

    async def subscribe(self, channel: str, inbox: str, **fields) -> "RawSub":
        fields.setdefault("max_in_flight", 1024)
        fields.setdefault("ack_wait_in_secs", 30)
        sub = RawSub(self, channel, inbox)
        sub.nsub = await self.nc.subscribe(inbox, cb=sub._on_msg)
        req = pb.SubscriptionRequest(client_id=self.client_id, subject=channel, inbox=inbox,
                                     **fields)
        r = await self.nc.request(self.resp.sub_requests, req.SerializeToString(), timeout=TIMEOUT)
        resp = pb.SubscriptionResponse.FromString(r.data)
        sub.ack_inbox, sub.error = resp.ack_inbox, resp.error
        return sub

    async def end(self, sub: "RawSub", *, unsubscribe: bool, durable_name: str = "") -> str:
        subject = self.resp.unsub_requests if unsubscribe else self.resp.sub_close_requests
        req = pb.UnsubscribeRequest(client_id=self.client_id, subject=sub.channel,
                                    inbox=sub.ack_inbox, durable_name=durable_name)
        r = await self.nc.request(subject, req.SerializeToString(), timeout=TIMEOUT)
        await sub.nsub.unsubscribe()
        return pb.SubscriptionResponse.FromString(r.data).error

    async def ping(self) -> pb.PingResponse:
        r = await self.nc.request(self.resp.ping_requests,
                                  pb.Ping(conn_id=self.conn_id).SerializeToString(),
                                  timeout=TIMEOUT)
        return pb.PingResponse.FromString(r.data)

    async def close(self) -> str:
        r = await self.nc.request(self.resp.close_requests,
                                  pb.CloseRequest(client_id=self.client_id).SerializeToString(),
                                  timeout=TIMEOUT)
        await self.nc.close()
        return pb.CloseResponse.FromString(r.data).error

    async def vanish(self) -> None:
        """Die without a word: the server only finds out through heartbeats."""
        await self.nc.close()


class RawSub:
    def __init__(self, client: RawStan, channel: str, inbox: str):
        self.client = client
        self.channel = channel
        self.inbox = inbox
        self.ack_inbox = ""
        self.error = ""
        self.nsub = None
        self.queue: asyncio.Queue[pb.MsgProto] = asyncio.Queue()

    async def _on_msg(self, msg):
        await self.queue.put(pb.MsgProto.FromString(msg.data))

    async def next(self, timeout: float = TIMEOUT) -> pb.MsgProto:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def ack(self, m: pb.MsgProto) -> None:
        await self.client.nc.publish(
            self.ack_inbox, pb.Ack(subject=self.channel, sequence=m.sequence).SerializeToString())

    def nothing_pending(self) -> bool:
        return self.queue.empty()
