"""Waiting for a STAN client's ack to reach JetStream.

Client acks are fire-and-forget: a client that acked and then crashes (or
reboots) may have lost the ack on the way. A test that means "acked, then
crash" must first see the ack recorded on the durable's JetStream consumer;
there is no event for it, so it is polled.
"""

from __future__ import annotations

from stanfleet.streaming.naming import Subjects, escape, js_name

from ..waiting import eventually


async def durable_acked(nc, cluster_id: str, channel: str, client_id: str, durable: str,
                        stream_seq: int, timeout: float = 10.0) -> None:
    """Until the durable's consumer (channel's own stream, families off) has
    its ack floor at stream_seq or beyond."""
    stream = Subjects(cluster_id).stream_for(channel)
    consumer = js_name("D", escape(client_id), escape(durable))

    async def ack_recorded():
        info = await nc.jsm().consumer_info(stream, consumer)
        return info.ack_floor.stream_seq >= stream_seq
    ack_recorded.__name__ = f"{client_id}'s ack of {channel} #{stream_seq} recorded"
    await eventually(ack_recorded, timeout)
