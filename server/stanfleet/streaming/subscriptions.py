"""Subscriptions: STAN subscriptions on top of JetStream push consumers.

A *group* is one JetStream consumer together with the STAN subscriptions that
share it: a plain or durable subscription is a group of one, a queue group has
one member per queue subscriber. JetStream does the bookkeeping that must
survive us (ack floor, redelivery after ack_wait, max_ack_pending); we
translate its messages to MsgProto, spread a queue group's messages over its
members, and turn STAN Acks back into JetStream acks.

A consumer only receives messages while we are subscribed to its deliver
subject, so an offline durable gets nothing until it resumes. When the last
member of a durable leaves we NAK its unacked messages after unsubscribing:
JetStream then redelivers them first when the durable comes back, as STAN does.

Long because a STAN subscription's life (create, resume, redeliver, hand over
a queue member's messages, close) is one state machine over one consumer;
split, its invariants would span files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NotFoundError
from nats.nuid import NUID

from ..pb import protocol_pb2 as pb
from . import errors as E
from . import families
from .channels import Channel, ChannelStore
from .jsapi import RetryingJSM, list_consumers
from .naming import Subjects, check_subject, escape, js_name
from .relay import parse_headers
from .state import StateStore

log = logging.getLogger("stanfleet.streaming.subs")

MAX_STALE_NAKS = 100_000  # beyond this many, the rest of a restart's unacked wait for ack_wait
PLAIN_SUB_INACTIVE = 3600.0  # a plain sub's consumer outlives a crash of ours by this long
# JetStream requests in flight while restoring: a restart of a 10,000-device
# fleet looks up 20,000 consumers, one round trip each; serially that is minutes.
DEFAULT_RESTORE_CONCURRENCY = 64
DELIVERY_LIMITS = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 512 * 1024 * 1024}


@dataclass(eq=False)
class Member:
    """One STAN subscription."""
    sub_id: str
    client_id: str
    channel: str
    inbox: str
    ack_inbox: str
    max_in_flight: int
    ack_wait: int
    durable_name: str
    queue: str
    group: "Group"
    outstanding: dict = field(default_factory=dict)  # seq -> JetStream ack subject
    last_sent: int = 0
    created: float = field(default_factory=time.time)


@dataclass(slots=True)
class Delivery:
    """A JetStream push message as the delivery path needs it (parsed inline,
    inline.py): no nats-py Msg, header dict only for family channels."""
    reply: str
    data: bytes
    headers: dict | None = None


@dataclass(eq=False)
class Group:
    """One JetStream consumer and the STAN subscriptions sharing it."""
    key: tuple
    channel: Channel
    consumer: str
    deliver_subject: str
    durable: bool
    config: api.ConsumerConfig
    members: list = field(default_factory=list)
    owner: dict = field(default_factory=dict)  # seq -> Member it is outstanding at
    backlog: deque = field(default_factory=deque)  # JetStream msgs no member had room for
    nats_sub: object = None
    rr: int = 0
    redelivered: int = 0
    # Unacked deliveries of an earlier run (stream seqs first..last, up to consumer
    # seq dseq), redelivered as soon as delivery starts: Go's redelivery on restart.
    stale: tuple[int, int, int] | None = None

    @property
    def max_ack_pending(self) -> int:
        return max(1, sum(m.max_in_flight for m in self.members))


class SubscriptionManager:
    def __init__(self, nc: NATS, subjects: Subjects, channels: ChannelStore, state: StateStore):
        self.nc = nc
        # Deliveries and client acks are handled inline on nc, as store-acks are
        # (channels.py): in arrival order, after the PubAck of a stored message.
        self.inline = channels.inline
        self.state = state
        self.jsm = RetryingJSM(nc.jsm())
        self.subjects = subjects
        self.channels = channels
        self.groups: dict[tuple, Group] = {}
        self.members: dict[str, Member] = {}  # sub_id -> member
        self.by_ack_inbox: dict[str, Member] = {}
        self.by_client: dict[str, set] = {}
        self._ack_sub = None
        # (headers, clientID) -> bool: may this Ack's sender ack for the client?
        # Set by the server when authorization is on.
        self.ack_gate = None
        # --replace_durable: a durable subscribed again takes over from the one
        # registered, instead of ERR_DUP_DURABLE.
        self.replace_durable = False
        # (channel, clientID) -> how many subscriptions count against the
        # channel's max_subs for this request; None: all of the channel's.
        # With identities, the server counts the requester's own only, so no
        # identity can fill a shared channel for the others.
        self.count_channel_subs = None
        # Changes of one group's membership are serialised by that group's key
        # alone: after a restart thousands of devices resubscribe at once, and
        # unrelated durables must not queue behind each other's JetStream calls.
        self._locks = KeyedLocks()
        self.subs_per_channel: dict[str, int] = {}  # channel -> members (max_subs check)
        # (clientID, channel) -> its members there: the per-identity max_subs
        # count, without walking a channel's 10,000 durables per subscribe.
        self.client_channel_subs: dict[tuple[str, str], int] = {}
        self.msgs_out = 0
        self.bytes_out = 0
        self.redeliveries = 0

    async def start(self) -> None:
        self._ack_sub = await self.inline.subscribe(self.subjects.acks_prefix + ".*",
                                                    self._on_ack, **DELIVERY_LIMITS)

    async def stop(self) -> None:
        if self._ack_sub is not None:
            self.inline.forget(self._ack_sub)
            await self._ack_sub.unsubscribe()
        for g in list(self.groups.values()):
            await self._stop_delivery(g)

    async def _stop_delivery(self, group: Group) -> None:
        if group.nats_sub is not None:
            sub, group.nats_sub = group.nats_sub, None
            self.inline.forget(sub)
            await sub.unsubscribe()

    # -- subscribe -----------------------------------------------------------

    async def subscribe(self, req: pb.SubscriptionRequest) -> Member:
        """Create (or resume) a subscription; raises StanProtocolError."""
        check_subject(req.inbox, "inbox")
        if req.ack_wait_in_secs < 1:
            raise E.StanProtocolError(E.ERR_INVALID_ACK_WAIT)
        if req.max_in_flight < 1:
            raise E.StanProtocolError(E.ERR_INVALID_MAX_INFLIGHT)
        channel = await self.channels.ensure(req.subject)
        if self.replace_durable and req.durable_name and not req.q_group:
            old = self.groups.get(_group_key(req, ""))
            for member in list(old.members if old else ()):
                log.info("durable=%s of client=%s replaced", req.durable_name, req.client_id)
                await self.remove(member, unsubscribe=False)
        sub_id = _next_id()
        key = _group_key(req, sub_id)
        group = self.groups.get(key)
        if group is not None and group.members and not req.q_group:
            retried = _retried(group, req)
            if retried is not None:
                return retried
            raise E.StanProtocolError(E.ERR_DUP_DURABLE)  # before the limit, as Go
        max_subs = self.channels.limits_for(channel.name).max_subs
        # The slot is taken before any await, so concurrent subscribes cannot
        # overshoot max_subs; it is given back below if the subscribe fails.
        if self.count_channel_subs is not None:
            n_subs = self.count_channel_subs(channel, req.client_id)
        else:
            n_subs = self.subs_per_channel.get(channel.name, 0)
        if max_subs and n_subs >= max_subs:
            raise E.StanProtocolError(E.ERR_TOO_MANY_SUBS)
        self._count(channel.name, 1)
        try:
            async with self._locks.hold(key):
                member = await self._join(key, channel, req, sub_id)
        except BaseException:
            self._count(channel.name, -1)
            raise
        return member

    async def _join(self, key: tuple, channel: Channel, req, sub_id: str) -> Member:
        group = self.groups.get(key)
        if group is not None and group.members and not req.q_group:
            retried = _retried(group, req)
            if retried is not None:
                self._count(channel.name, -1)  # subscribe() took a slot for a new member
                return retried
            raise E.StanProtocolError(E.ERR_DUP_DURABLE)
        if group is None:
            group = await self._open_group(key, channel, req)
        member = Member(sub_id=sub_id, client_id=req.client_id, channel=channel.name,
                        inbox=req.inbox, ack_inbox=self.subjects.ack_inbox(sub_id),
                        max_in_flight=req.max_in_flight, ack_wait=req.ack_wait_in_secs,
                        durable_name=req.durable_name, queue=req.q_group, group=group)
        try:
            await self.state.save_sub(sub_id, _record(member))
        except Exception:
            if not group.members:
                await self._close_group(group, keep=group.durable)
            raise
        group.members.append(member)
        if len(group.members) > 1:
            await self._update_consumer(group)
        self._index(member)
        return member

    def _count(self, channel: str, delta: int) -> None:
        n = self.subs_per_channel.get(channel, 0) + delta
        if n > 0:
            self.subs_per_channel[channel] = n
        else:
            self.subs_per_channel.pop(channel, None)

    def _index(self, member: Member) -> None:
        self.members[member.sub_id] = member
        self.by_ack_inbox[member.ack_inbox] = member
        self.by_client.setdefault(member.client_id, set()).add(member.sub_id)
        key = (member.client_id, member.channel)
        self.client_channel_subs[key] = self.client_channel_subs.get(key, 0) + 1

    def held_on(self, client_id: str, channel: str) -> int:
        """The subscriptions client_id holds on channel."""
        return self.client_channel_subs.get((client_id, channel), 0)

    async def restore(self, records: list[dict], known_clients) -> int:
        """Rebuild subscriptions saved by an earlier run and resume their deliveries."""
        live = []
        for r in records:
            channel = self.channels.channels.get(r.get("channel", "")) \
                or self.channels.family_channel(r.get("channel", ""))
            if r.get("client_id") not in known_clients or channel is None or not r.get("key"):
                log.info("sub=%s of client=%s dropped: its client or channel is gone",
                         r.get("sub_id"), r.get("client_id"))
                await self.state.delete_sub(r.get("sub_id", ""))
                continue
            live.append((r, channel, tuple(r["key"])))
        # The consumers are listed per stream, 256 to a request: a fleet's
        # 20,000 looked up one by one took 32 s after a restart.
        first = {}
        for r, channel, key in live:
            first.setdefault(key, (r, channel))
        sem = asyncio.Semaphore(DEFAULT_RESTORE_CONCURRENCY)

        async def listing(stream: str) -> tuple[str, dict]:
            async with sem:
                return stream, await list_consumers(self.jsm, stream)

        streams = {ch.stream for r, ch in first.values()}
        infos = dict(await asyncio.gather(*(listing(s) for s in streams)))
        found = {}
        for key, (r, channel) in first.items():
            info = infos[channel.stream].get(r["consumer"])
            if info is None:
                # Asked alone before it is given up: a listing pages by offset,
                # and a consumer that went meanwhile shifts the pages after it.
                try:
                    info = await self.jsm.consumer_info(channel.stream, r["consumer"])
                except NotFoundError:
                    pass
            if info is not None:
                found[key] = Group(key=key, channel=channel, consumer=r["consumer"],
                                   deliver_subject=info.config.deliver_subject,
                                   durable=bool(r.get("durable")), config=info.config,
                                   stale=_unacked(info))
        restored = 0
        for r, channel, key in live:
            group = self.groups.get(key) or found.get(key)
            if group is None:
                log.warning("sub=%s lost its consumer %s; dropped", r["sub_id"], r["consumer"])
                await self.state.delete_sub(r["sub_id"])
                continue
            self.groups[key] = group
            member = Member(sub_id=r["sub_id"], client_id=r["client_id"], channel=channel.name,
                            inbox=r["inbox"], ack_inbox=self.subjects.ack_inbox(r["sub_id"]),
                            max_in_flight=r["max_in_flight"], ack_wait=r["ack_wait"],
                            durable_name=r.get("durable_name", ""), queue=r.get("queue", ""),
                            group=group, created=r.get("created", time.time()))
            group.members.append(member)
            self._index(member)
            self._count(channel.name, 1)
            restored += 1
        for group in self.groups.values():
            if group.members:
                await self.start_delivery(group.members[0])
        return restored

    async def start_delivery(self, member: Member) -> None:
        """Begin delivering: called after the SubscriptionResponse went out, so a
        client never sees a message before it knows its ack inbox."""
        group = member.group
        if group.nats_sub is None:
            serving = self.channels.serving
            family = group.channel.family is not None

            def deliver(subject: bytes, reply: bytes, data: bytes, headers) -> None:
                if not serving() or not reply.startswith(b"$JS.ACK."):
                    return  # fenced (FT), or a status or heartbeat: not used by our consumers
                self._on_js_msg(group, Delivery(reply.decode(), data,
                                                parse_headers(headers) if family else None))
            group.nats_sub = await self.inline.subscribe(group.deliver_subject, deliver,
                                                         **DELIVERY_LIMITS)
            await self._redeliver_stale(group)
        else:
            self._drain_backlog(group)

    async def _open_group(self, key: tuple, channel: Channel, req) -> Group:
        kind = key[0]
        durable = kind in ("durable", "dqueue")
        # A family's stream holds many channels: their consumers' names say which.
        on = (escape(channel.name),) if channel.family is not None else ()
        if kind == "durable":
            name = js_name("D", *on, escape(req.client_id), escape(req.durable_name))
        elif kind == "dqueue":
            name = js_name("DQ", *on, escape(req.durable_name), escape(req.q_group))
        elif kind == "queue":
            name = js_name("Q", *on, escape(req.q_group), _next_id())
        else:
            name = "S_" + _next_id()
        deliver = f"{self.subjects.deliver_prefix}.{channel.stream}.{name}"
        try:
            cfg = await self._start_config(channel, req)
        except E.StanProtocolError as e:
            if not durable:
                raise
            # A resumed durable's start position is not used (STAN's rule).
            return await self._resume(key, channel, req, name, deliver, e)
        cfg.name = name
        cfg.ack_policy = api.AckPolicy.EXPLICIT
        cfg.max_deliver = -1
        cfg.replay_policy = api.ReplayPolicy.INSTANT
        cfg.description = f"STAN {kind} on {channel.name}"
        if channel.family is not None:
            cfg.filter_subject = channel.store_subject
        if durable:
            cfg.durable_name = name
        else:
            cfg.inactive_threshold = PLAIN_SUB_INACTIVE
        _member_settings(cfg, req, deliver)
        try:
            # A durable's consumer may exist already: JetStream then keeps its
            # position and takes these settings (what a resume sets), so one
            # request both creates and resumes; a lookup first cost a fleet's
            # connect 20,000 more round trips.
            info = await self.jsm.add_consumer(channel.stream, cfg)
        except APIError as e:
            if not durable:
                raise
            # An existing durable whose settings cannot become these (asked
            # with another start position, say): resumed as it is, as STAN's.
            return await self._resume(key, channel, req, name, deliver, e)
        if durable and info.delivered is not None and info.delivered.consumer_seq:
            log.info("resuming durable consumer=%s channel=%s", name, channel.name)
        return self._group(key, channel, name, deliver, durable, cfg,
                           _unacked(info) if durable else None)

    async def _resume(self, key: tuple, channel: Channel, req, name: str, deliver: str,
                      cause: Exception) -> Group:
        """The durable's consumer as it is, with this member's settings; if
        there is none, `cause` (why it could not be created) is raised."""
        try:
            info = await self.jsm.consumer_info(channel.stream, name)
        except NotFoundError:
            raise cause from None
        log.info("resuming durable consumer=%s channel=%s", name, channel.name)
        cfg = info.config
        _member_settings(cfg, req, deliver)
        info = await self.jsm.add_consumer(channel.stream, cfg)
        return self._group(key, channel, name, deliver, True, cfg, _unacked(info))

    def _group(self, key, channel, name, deliver, durable, cfg, stale) -> Group:
        group = Group(key=key, channel=channel, consumer=name, deliver_subject=deliver,
                      durable=durable, config=cfg, stale=stale)
        self.groups[key] = group
        return group

    async def _start_config(self, channel: Channel, req) -> api.ConsumerConfig:
        sp = req.start_position
        if channel.family is not None:
            return await self._family_start(channel, req)
        if sp == pb.NewOnly:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        if sp == pb.LastReceived:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST)
        if sp == pb.First:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        if sp == pb.SequenceStart:
            info = await self.jsm.stream_info(channel.stream)
            first, last = info.state.first_seq, info.state.last_seq
            # Go's rule: before the first, from the first; past the end, the next one.
            seq = min(req.start_sequence, last + 1)
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=max(seq, first, 1))
        if sp == pb.TimeDeltaStart:
            # A negative delta is a start in the future: accepted, as by Go.
            start = time.time() - req.start_time_delta / 1e9
            when = dt.datetime.fromtimestamp(max(start, 0), tz=dt.timezone.utc)
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                      opt_start_time=when.isoformat().replace("+00:00", "Z"))
        raise E.StanProtocolError(E.ERR_INVALID_START)

    async def _family_start(self, channel: Channel, req) -> api.ConsumerConfig:
        """Start positions on a family channel: one subject of a shared stream."""
        sp = req.start_position
        if sp == pb.LastReceived:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        if sp == pb.SequenceStart:
            # Go's rule: before the first, from the first; past the end, the next one.
            sseq = await families.stream_seq_for(self.jsm, channel.stream,
                                                 channel.store_subject, req.start_sequence)
            if sseq is None:
                return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=sseq)
        return await self._start_config(_Unfamiliar(channel), req)

    async def _update_consumer(self, group: Group) -> None:
        group.config.max_ack_pending = group.max_ack_pending
        try:
            await self.jsm.add_consumer(group.channel.stream, group.config)
        except Exception as e:  # the group still works, only with a lower in-flight cap
            log.warning("consumer=%s max_ack_pending update failed: %s", group.consumer, e)

    # -- unsubscribe / close ---------------------------------------------------

    def find(self, client_id: str, inbox: str) -> Member | None:
        """Clients name a subscription by its ack inbox (Go, Node) or by its inbox."""
        m = self.by_ack_inbox.get(inbox)
        if m is not None and m.client_id == client_id:
            return m
        for sub_id in self.by_client.get(client_id, ()):
            m = self.members[sub_id]
            if m.inbox == inbox:
                return m
        return None

    async def remove(self, member: Member, *, unsubscribe: bool) -> None:
        """unsubscribe=True deletes a durable; False (close, dead client) keeps it."""
        async with self._locks.hold(member.group.key):
            if self.members.pop(member.sub_id, None) is None:
                return
            self._count(member.channel, -1)
            self.by_ack_inbox.pop(member.ack_inbox, None)
            subs = self.by_client.get(member.client_id)
            if subs is not None:
                subs.discard(member.sub_id)
                if not subs:
                    del self.by_client[member.client_id]
            key = (member.client_id, member.channel)
            n = self.client_channel_subs.get(key, 0) - 1
            if n > 0:
                self.client_channel_subs[key] = n
            else:
                self.client_channel_subs.pop(key, None)
            group = member.group
            group.members.remove(member)
            pending = list(member.outstanding.items())
            member.outstanding.clear()
            for seq, _ in pending:
                group.owner.pop(seq, None)
            if group.members:
                # Hand the leaver's unacked messages to the remaining members.
                await self._nak(pending)
                await self._update_consumer(group)
                await self.state.delete_sub(member.sub_id)
                return
            await self._close_group(group, keep=group.durable and not unsubscribe,
                                    pending=pending)
        await self.state.delete_sub(member.sub_id)

    async def _close_group(self, group: Group, *, keep: bool, pending=()) -> None:
        self.groups.pop(group.key, None)
        await self._stop_delivery(group)
        group.backlog.clear()
        if keep:
            # Unsubscribed first, so these wait in JetStream's redelivery
            # queue and come first when the durable resumes.
            await self._nak(pending)
            return
        try:
            await self.jsm.delete_consumer(group.channel.stream, group.consumer)
        except NotFoundError:
            pass
        except Exception as e:
            log.warning("consumer=%s delete failed: %s", group.consumer, e)

    async def remove_client(self, client_id: str) -> None:
        """Every subscription of the client, each even if another one fails:
        one left in place would refuse the client's durable when it connects
        again ("duplicate durable registration"), for as long as this runs."""
        failed: Exception | None = None
        for sub_id in list(self.by_client.get(client_id, ())):
            m = self.members.get(sub_id)
            if m is None:
                continue
            try:
                await self.remove(m, unsubscribe=False)
            except Exception as e:  # the member is gone from memory; its record may not be
                log.error("client=%s sub=%s removal incomplete: %r", client_id, sub_id, e)
                failed = failed or e
        if failed is not None:
            raise failed

    async def _redeliver_stale(self, group: Group) -> None:
        """NAK what an earlier run delivered and nobody acked, so JetStream sends
        it now instead of after ack_wait. We no longer hold those deliveries' ack
        subjects; JetStream's v1 ack subject names a pending message by stream
        sequence, and ignores one that is not pending (acked already)."""
        if group.stale is None:
            return
        first, last, dseq = group.stale
        group.stale = None
        last = min(last, first + MAX_STALE_NAKS - 1)
        prefix = f"$JS.ACK.{group.channel.stream}.{group.consumer}.1"
        for sseq in range(first, last + 1):
            await self.nc.publish(f"{prefix}.{sseq}.{dseq}.0.0", b"-NAK")

    async def _nak(self, pending) -> None:
        for _, reply in pending:
            await self.nc.publish(reply, b"-NAK")

    # -- delivery --------------------------------------------------------------

    def _on_js_msg(self, group: Group, msg: Delivery) -> None:
        seq, delivered, ts = _ack_meta(msg.reply)
        if group.channel.family is not None:
            seq = families.seq_of(msg.headers) or seq
        member = group.owner.get(seq)
        if member is not None and delivered > 1 and len(group.members) > 1:
            member = self._redelivery_member(group, member, seq)
        if member is None:
            member = self._pick(group)
            if member is None:
                group.backlog.append(msg)
                return
        self._send(group, member, msg, seq, delivered, ts)

    def _redelivery_member(self, group: Group, last: Member, seq: int) -> Member:
        """As the original server: a queue group's redelivery goes to the member
        with the fewest unacked messages, not necessarily the one that had it. A
        member that never acks (its client gone, or its subscribe reply lost to a
        timeout) must not keep its share from the others."""
        others = [m for m in group.members
                  if m is not last and len(m.outstanding) < m.max_in_flight]
        if not others:
            return last
        last.outstanding.pop(seq, None)
        group.owner.pop(seq, None)
        return min(others, key=lambda m: len(m.outstanding))

    def _pick(self, group: Group) -> Member | None:
        members = group.members
        n = len(members)
        for i in range(n):
            m = members[(group.rr + i) % n]
            if len(m.outstanding) < m.max_in_flight:
                group.rr = (group.rr + i + 1) % n
                return m
        return None

    def _send(self, group: Group, member: Member, msg: Delivery, seq: int, delivered: int,
              ts: int) -> None:
        member.outstanding[seq] = msg.reply
        group.owner[seq] = member
        if seq > member.last_sent:
            member.last_sent = seq
        redelivered = delivered > 1
        if redelivered:
            self.redeliveries += 1
        out = pb.MsgProto(sequence=seq, subject=group.channel.name, data=msg.data, timestamp=ts,
                          redelivered=redelivered, redelivery_count=delivered - 1)
        data = out.SerializeToString()
        self.msgs_out += 1
        self.bytes_out += len(msg.data)
        self.inline.publish(member.inbox, data)

    def _drain_backlog(self, group: Group) -> None:
        if group.backlog:
            asyncio.get_running_loop().call_soon(self._drain, group)

    def _drain(self, group: Group) -> None:
        while group.backlog:
            member = self._pick(group)
            if member is None:
                return
            msg = group.backlog.popleft()
            seq, delivered, ts = _ack_meta(msg.reply)
            if group.channel.family is not None:
                seq = families.seq_of(msg.headers) or seq
            self._send(group, member, msg, seq, delivered, ts)

    # -- acks --------------------------------------------------------------------

    def _on_ack(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if not self.channels.serving():
            return  # fenced (FT): as a FencedConnection callback would not run
        member = self.by_ack_inbox.get(subject.decode())
        if member is None:
            return  # sub gone: its messages were handed on or wait in JetStream
        if self.ack_gate is not None and \
                not self.ack_gate(parse_headers(headers), member.client_id):
            return  # another identity's ack: ignored (and logged by the gate)
        try:
            ack = pb.Ack.FromString(data)
        except Exception:
            log.warning("malformed Ack on %s (%d bytes) ignored", subject.decode(errors="replace"),
                        len(data))
            return
        reply = member.outstanding.pop(ack.sequence, None)
        if reply is None:
            return  # unknown or already acked sequence: nothing to do
        group = member.group
        group.owner.pop(ack.sequence, None)
        self.inline.publish(reply, b"+ACK")
        if group.backlog:
            self._drain(group)


class _Unfamiliar:
    """A family channel seen as one of its own for the start positions whose
    consumer config does not depend on sequences (new, first, time)."""

    def __init__(self, channel: Channel):
        self.family = None
        self.stream = channel.stream
        self.name = channel.name


def _member_settings(cfg: api.ConsumerConfig, req, deliver: str) -> None:
    """What a subscription request sets on its consumer, new or resumed."""
    cfg.ack_wait = float(req.ack_wait_in_secs)
    cfg.max_ack_pending = req.max_in_flight
    cfg.deliver_subject = deliver
    # Who the consumer belongs to, for monitoring an offline durable.
    cfg.metadata = {"stan_client_id": req.client_id, "stan_durable": req.durable_name,
                    "stan_queue": req.q_group}


def _unacked(info) -> tuple[int, int, int] | None:
    """The stream seqs a consumer delivered and has not had acked, from its info."""
    if not info.num_ack_pending or info.delivered is None or info.ack_floor is None:
        return None
    first = (info.ack_floor.stream_seq or 0) + 1
    last = info.delivered.stream_seq or 0
    if last < first:
        return None
    return first, last, info.delivered.consumer_seq or 1


class KeyedLocks:
    """One asyncio.Lock per key, existing only while someone holds or waits for it."""

    def __init__(self):
        self._locks: dict[tuple, list] = {}  # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple):
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]


def _retried(group: Group, req) -> Member | None:
    """The durable member this request repeats (same client and inbox), if any.
    A client whose subscribe timed out asks again with the same inbox; the
    first may have been registered meanwhile, and refusing the retry as a
    duplicate durable would cost the client a whole new session. A new
    subscription of a STAN client always has a new inbox."""
    for m in group.members:
        if m.client_id == req.client_id and m.inbox == req.inbox:
            return m
    return None


def _group_key(req, sub_id: str) -> tuple:
    if req.q_group and req.durable_name:
        return ("dqueue", req.subject, req.durable_name, req.q_group)
    if req.q_group:
        return ("queue", req.subject, req.q_group)
    if req.durable_name:
        return ("durable", req.subject, req.client_id, req.durable_name)
    return ("sub", req.subject, sub_id)


def _record(m: Member) -> dict:
    g = m.group
    return {"sub_id": m.sub_id, "client_id": m.client_id, "channel": m.channel,
            "inbox": m.inbox, "max_in_flight": m.max_in_flight, "ack_wait": m.ack_wait,
            "durable_name": m.durable_name, "queue": m.queue, "created": m.created,
            "key": list(g.key), "consumer": g.consumer, "durable": g.durable}


def _ack_meta(reply: str) -> tuple[int, int, int]:
    """(stream seq, delivery count, timestamp ns) from a JetStream ack subject.

    v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    v2: $JS.ACK.<domain>.<acc>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<x>]
    """
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[4]), int(t[7])
    return int(t[7]), int(t[6]), int(t[9])


_NUID = NUID()


def _next_id() -> str:
    return _NUID.next().decode()
