"""A scripted stand-in for a streaming server, on a real nats-server.

It lets tests control what the real server would never do on demand: stay
silent on pings or pub acks, send malformed frames, use unusual subjects.
"""

from __future__ import annotations

import asyncio

import nats
from stanfleet.pb import protocol_pb2 as pb


class FakeStan:
    def __init__(self, url: str, cluster_id: str = "fake-cluster", prefix: str = "fake"):
        self.url = url
        self.cluster_id = cluster_id
        self.nats_url = url
        self.prefix = prefix
        self.nc = None
        self.answer_pings = True
        self.ack_publishes = True
        self.ping_error = ""
        self.connect_requests: asyncio.Queue[pb.ConnectRequest] = asyncio.Queue()
        self.pub_msgs: asyncio.Queue = asyncio.Queue()  # (nats msg, PubMsg)
        self.pings: asyncio.Queue[pb.Ping] = asyncio.Queue()
        self.sub_requests: asyncio.Queue[pb.SubscriptionRequest] = asyncio.Queue()
        self.acks: asyncio.Queue[pb.Ack] = asyncio.Queue()
        self.close_requests: asyncio.Queue[pb.CloseRequest] = asyncio.Queue()

    def subject(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    async def start(self) -> FakeStan:
        self.nc = await nats.connect(self.url)
        nc = self.nc
        await nc.subscribe(f"_STAN.discover.{self.cluster_id}", cb=self._on_connect)
        await nc.subscribe(self.subject("pub.>"), cb=self._on_pub)
        await nc.subscribe(self.subject("pings"), cb=self._on_ping)
        await nc.subscribe(self.subject("sub"), cb=self._on_sub)
        await nc.subscribe(self.subject("acks.*"), cb=self._on_ack)
        await nc.subscribe(self.subject("close"), cb=self._on_close)
        await nc.flush()
        return self

    async def stop(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def _on_connect(self, msg) -> None:
        req = pb.ConnectRequest.FromString(msg.data)
        self.connect_requests.put_nowait(req)
        resp = pb.ConnectResponse(
            pub_prefix=self.subject("pub"),
            sub_requests=self.subject("sub"),
            unsub_requests=self.subject("unsub"),
            close_requests=self.subject("close"),
            sub_close_requests=self.subject("subclose"),
            ping_requests=self.subject("pings"),
            ping_interval=req.ping_interval,
            ping_max_out=req.ping_max_out,
            protocol=1,
        )
        await self.nc.publish(msg.reply, resp.SerializeToString())

    async def _on_pub(self, msg) -> None:
        pub = pb.PubMsg.FromString(msg.data)
        self.pub_msgs.put_nowait((msg, pub))
        if self.ack_publishes:
            await self.nc.publish(msg.reply, pb.PubAck(guid=pub.guid).SerializeToString())

    async def _on_ping(self, msg) -> None:
        self.pings.put_nowait(pb.Ping.FromString(msg.data))
        if self.answer_pings:
            resp = pb.PingResponse(error=self.ping_error)
            await self.nc.publish(msg.reply, resp.SerializeToString())

    async def _on_sub(self, msg) -> None:
        req = pb.SubscriptionRequest.FromString(msg.data)
        self.sub_requests.put_nowait(req)
        resp = pb.SubscriptionResponse(ack_inbox=self.subject("acks.1"))
        await self.nc.publish(msg.reply, resp.SerializeToString())

    async def _on_ack(self, msg) -> None:
        self.acks.put_nowait(pb.Ack.FromString(msg.data))

    async def _on_close(self, msg) -> None:
        self.close_requests.put_nowait(pb.CloseRequest.FromString(msg.data))
        await self.nc.publish(msg.reply, pb.CloseResponse().SerializeToString())

    async def deliver(self, inbox: str, data: bytes) -> None:
        """Send raw bytes to a subscription inbox, as the server delivers MsgProtos."""
        await self.nc.publish(inbox, data)
        await self.nc.flush()
