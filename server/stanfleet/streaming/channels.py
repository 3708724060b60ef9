"""Channels: one JetStream stream per STAN channel, and the publish hot path.

The STAN sequence of a message is its stream sequence, the channel limits are
the stream limits, and the PubMsg guid is the Nats-Msg-Id so a republish is
deduplicated by JetStream. A channel in a family (--channel_families,
families.py) is one subject of its family's stream instead: the server numbers
its messages (Stan-Seq header), one store in flight per channel, each naming
the previous one's stream seq so no other writer can slip in between.

Hot path: a PubMsg is re-published to the channel's stream subject with a reply
subject of ours that carries a token; JetStream's store-ack lands on one
wildcard subscription, which maps the token back to the client's ack inbox and
sends the PubAck. No future per message, so publishes stay pipelined, and the
PubAck still only goes out after JetStream has stored the message. A
channel's stores from one read of the relay go as a group with one store-ack
(_send_groups). PubMsgs
arrive on a raw relay connection (relay.py) and store-acks on nats-py's
connection, parsed inline (inline.py); both handlers are plain functions: no
coroutine, task or queue per message.

Long because a channel's life (load, create, limit, reap), for a stream of
its own or in a family, and the hot path that creates channels on first
publish share the channel table and the pending stores; split, both halves
would reach into each other. What only families need is in families.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import APIError

from ..pb import protocol_pb2 as pb
from ..pb import pub_ack
from . import errors as E
from . import families
from .inline import InlineSubscriptions
from .jsapi import RetryingJSM
from .limits import ChannelLimits
from .naming import InvalidName, Subjects, check_channel
from .quotas import DEFAULT_MAX_GUID
from .relay import Relay, parse_headers

log = logging.getLogger("stanfleet.streaming.channels")

ERR_WRONG_LAST = b'"err_code":%d' % families.ERR_WRONG_LAST_SEQUENCE
DUPLICATE_WINDOW = 120.0  # seconds a guid is remembered for deduplication
# Our extension to STAN, which has no wildcard subscriptions: every new channel
# is announced on this channel, so a service can discover (say) the events
# channel of a device it has never seen, with an ordinary durable subscription.
REGISTRY_CHANNEL = "stanfleet.channels"
# Framing around a message's data: the MsgProto fields, or the store's header lines.
MSG_OVERHEAD = 64
# JetStream's max_consumers for every channel: -1 would mean
# nats-server's default (1000), not unlimited.
UNLIMITED_CONSUMERS = 2**31 - 1
# Room for bursts of store-acks. Past this one is dropped (nats-py "slow
# consumer"): the publisher times out and retries, nothing acked is lost.
INGRESS_LIMITS = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 512 * 1024 * 1024}
# Stores in flight to JetStream (a few ms of its work). Past the high mark the
# relay stops reading PubMsgs until JetStream has answered down to the low one:
# unbounded, a burst queued 10,000 stores in JetStream and their PubAcks came
# after the clients' ack_wait although the messages were stored.
DEFAULT_MAX_STORES_IN_FLIGHT = 1024
DEFAULT_RESUME_STORES_IN_FLIGHT = 512
# A store is sent again (same bytes: a second copy is refused as a duplicate,
# or for a family channel as out of sequence) once a store sent after it to
# the same stream was answered and it was not (JetStream answers a stream's
# stores in order: it was lost, as in a leader election), or after this long
# without an answer, then twice as long, and so on; a group unanswered this
# long is sent again store by store. Lost, a family store held every later
# publish of its channel for pub_ack_timeout, and a registry store every new
# channel's first message (each waits for its entry). Not sooner on time
# alone: at 2 s, the copies of stores only slow doubled the work of a fleet's
# recovery (every device publishing 48.8 s after a restart against 24.0 s).
RESEND_AFTER = 10.0


class ChannelError(Exception):
    """A channel cannot be created or used (limit reached, JetStream refused)."""


@dataclass
class Channel:
    name: str
    stream: str
    store_subject: str
    ready: asyncio.Future
    # PubMsgs that arrived while the stream was being created, kept in order.
    waiting: deque = field(default_factory=deque)
    msgs_in: int = 0
    bytes_in: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    # Channel families (families.py): the pattern whose stream this channel
    # shares, or None for a stream of its own. A family channel numbers its
    # messages itself and stores one at a time (the next store names the
    # previous one's stream seq), so its PubMsgs queue here.
    family: str | None = None
    last_seq: int | None = None  # channel seq of the last stored; None: not read yet
    last_sseq: int = 0  # its stream seq
    fresh: bool = False  # a family channel not in the family's listing at load
    max_inactivity: float | None = None  # its limit, once the reaper looked it up
    storing: bool = False
    loading: bool = False
    queue: deque = field(default_factory=deque)
    # A family channel new to this server: its registry entry is stored
    # before its first message (_announce_family_channel), so a channel with
    # messages is always announced, whichever server stored them.
    unannounced: bool = False
    announcing: bool = False
    # A stream of its own: the stores taken since the last flush, sent as one
    # group (_send_groups); how many stores were sent to the stream; and the
    # stream's last seq once all of them are stored, if known (see
    # _send_groups: None until a store-ack tells it, and after any surprise).
    group: list = field(default_factory=list)
    sent: int = 0
    next_seq: int | None = None
    group_out: bool = False  # a group in flight: the next waits for its answer
    store_subject_b: bytes = field(init=False, repr=False)  # encoded once, for each store

    def __post_init__(self):
        self.store_subject_b = self.store_subject.encode()


@dataclass
class Family:
    pattern: str
    stream: str
    store_subject: str  # the stream's subject: the pattern under the store prefix
    ready: asyncio.Future
    # Every channel with a message was listed when we loaded the stream, or the
    # stream was empty when we created it: a channel not listed starts at 0.
    listed_all: bool = False


@dataclass(slots=True)
class _PendingStore:
    reply: str
    guid: str
    started: float
    owner: str = ""  # the identity whose pending-PubAck quota it counts against
    channel: Channel | None = None  # a family channel's store: its seq is ours
    seq: int = 0
    own: Channel | None = None  # a channel with a stream of its own
    no: int = 0  # own.sent once this store was sent
    # A group's last store: every store of the group, (reply, guid, data,
    # owner, started), all answered by this one's store-ack.
    group: list | None = None
    # A single store as sent, sent again while unanswered (sent_at: when last;
    # wait: until the next time; a group has sent_at and wait, and is sent
    # again store by store): a lost store otherwise waited pub_ack_timeout.
    raw: bytes = b""
    sent_at: float = 0.0
    wait: float = 0.0
    resent: bool = False
    mark: int = 0  # the last token given out when it was (last) sent


class ChannelStore:
    """Knows every channel, creates streams on first use, relays publishes."""

    def __init__(self, nc: NATS, subjects: Subjects, *, storage: str, replicas: int,
                 limits, pub_ack_timeout: float, is_known_client, on_stored=None,
                 has_subscriptions=None, authorize=None, relay: Relay,
                 families: list[str] = ()):
        self.nc = nc
        self.family_patterns = list(families)
        self.families: dict[str, Family] = {}
        # PubMsgs in and stores out on the relay's raw connection (one connection
        # keeps each channel's order). Store-acks in and PubAcks out stay on `nc`,
        # the connection deliveries leave on: a publisher then gets its PubAck
        # before any subscriber gets the message, as from the original server
        # (a second raw connection broke that order), and pausing the relay for
        # back pressure never stops the answers that end the pause.
        self.relay = relay
        relay.before_flush = self._send_groups
        # Store-acks are parsed and answered inline on nc (inline.py): same
        # connection and order as above, without nats-py's per-message tasks.
        self.inline = InlineSubscriptions.of(nc)
        self.jsm = RetryingJSM(nc.jsm())
        self.subjects = subjects
        self.storage = api.StorageType.FILE if storage == "file" else api.StorageType.MEMORY
        self.replicas = replicas
        self.limits = limits  # StoreLimits: defaults and per-channel overrides
        self._has_subscriptions = has_subscriptions or (lambda name: False)
        self.pub_ack_timeout = pub_ack_timeout
        self._is_known_client = is_known_client  # (client_id, conn_id) -> error str or ""
        self._on_stored = on_stored
        # (headers, client_id, channel) -> '' or the refusal; None: authorization off
        self._authorize = authorize
        # FT: False once this instance may no longer be the active one; the
        # relay's PubMsgs are then left unanswered, as the fenced connection's are.
        self.serving = lambda: True
        self.admit = None  # quotas: (headers, channel, nbytes) -> (refusal or '', owner)
        self.answered = lambda owner: None  # quotas: owner's PubAck went out
        self.heard = lambda client_id, conn_id: None  # an allowed publish: the client lives
        self.channels: dict[str, Channel] = {}
        self._pending: dict[bytes, _PendingStore] = {}  # by token, the store's reply suffix
        self._waiting = 0  # PubMsgs waiting for their channel's stream, all channels
        # By stream: the highest token of a store of it that was answered.
        self._answered_upto: dict[str, int] = {}
        self._in_flight = 0  # stores taken and not answered yet, all channels
        self._grouping: list[Channel] = []  # channels with stores to send at the flush
        self._next_token = 0
        self._ack_sub = None
        self._pub_sid = None
        # Acks of our own stores, "<prefix>.<token>", as bytes prefix for the reply.
        self._ack_prefix = subjects.js_ack_prefix + "."
        self._ack_prefix_b = self._ack_prefix.encode()
        self._ack_prefix_len = len(self._ack_prefix_b)
        self._pub_prefix_len = len(subjects.pub_prefix) + 1
        self._sweeper: asyncio.Task | None = None
        self._reaper: asyncio.Task | None = None
        # Announcements awaiting their store's PubAck, by the reply subject
        # they were stored with: "<our inbox>.<n>".
        self._announced_prefix = nc.new_inbox()
        self._announced: dict[str, asyncio.Future] = {}
        self._announced_sub = None
        self.msgs_in = 0
        self.bytes_in = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Load the channels; publishes are taken only from serve() on."""
        await self._load_existing()

    async def serve(self) -> None:
        """Take publishes: called once the clients are restored, or every PubMsg
        of a fleet reconnecting after a restart was refused as an unknown client
        and each device opened a new session (989 of 1,000 in fleet_load)."""
        self._ack_sub = await self.inline.subscribe(
            self.subjects.js_ack_prefix + ".*", self._on_store_ack, **INGRESS_LIMITS)
        self._announced_sub = await self.inline.subscribe(self._announced_prefix + ".*",
                                                          self._on_announced)
        self._pub_sid = self.relay.subscribe(self.subjects.pub_prefix + ".>", self._on_pub_msg)
        await self.relay.ping()  # subscribed at nats-server before we say ready
        self._sweeper = asyncio.create_task(self._sweep_pending())
        self._reaper = asyncio.create_task(self._reap_inactive())

    async def stop(self) -> None:
        if self._pub_sid is not None:
            # PubMsgs already received are handled as they arrive (synchronously),
            # so after the round trip nothing is left but their store-acks.
            self.relay.unsubscribe(self._pub_sid)
            self.relay.resume()
            try:
                await self.relay.ping()
            except Exception as e:
                log.warning("publish subscription did not drain: %s", e)
        # Let in-flight stores be answered before the ack subscription goes;
        # polled because JetStream's store-acks arrive on their own.
        deadline = time.monotonic() + 5
        waiting = len(self._pending)
        while self._pending and time.monotonic() < deadline and self.nc.is_connected:
            await asyncio.sleep(0.01)
        log.info("stopped taking publishes: %d stores were in flight, %d still unanswered",
                 waiting, len(self._pending))
        for sub in (self._ack_sub, self._announced_sub):
            if sub is not None:
                self.inline.forget(sub)
                await sub.unsubscribe()
        if self._sweeper:
            self._sweeper.cancel()
        if self._reaper:
            self._reaper.cancel()

    async def _load_existing(self) -> None:
        offset = 0
        while True:
            it = await self.jsm.streams_info_iterator(offset=offset)
            batch = list(it)
            for info in batch:
                meta = info.config.metadata or {}
                name = meta.get("stan_channel")
                if info.config.name.startswith(self.subjects.stream_prefix) and \
                        meta.get("stan_family"):
                    await self._load_family(meta["stan_family"], info.config)
                elif info.config.name.startswith(self.subjects.stream_prefix) and name:
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_result(True)
                    self.channels[name] = Channel(name, info.config.name,
                                                  self.subjects.store_subject(name), fut)
                    await self._apply_limits(name, info.config)
            offset += len(batch)
            if not batch or offset >= it.total:
                break
        if self.channels:
            log.info("loaded %d channels from JetStream", len(self.channels))

    async def _load_family(self, pattern: str, cfg: api.StreamConfig) -> None:
        """A family stream and its channels: those with messages. A channel
        with only subscriptions comes back when they are restored."""
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        fam = Family(pattern, cfg.name, cfg.subjects[0], fut)
        self.families[pattern] = fam
        info = await self.jsm.stream_info(cfg.name, subjects_filter=fam.store_subject)
        prefix = len(self.subjects.store_prefix) + 1
        listed = info.state.subjects or {}
        # JetStream lists at most 100,000 subjects in one answer: complete if
        # the listed subjects hold every message of the stream.
        fam.listed_all = sum(listed.values()) >= info.state.messages
        for subject in listed:
            name = subject[prefix:]
            self.channels[name] = Channel(name, fam.stream, subject, fut, family=pattern)
        await self._apply_limits(pattern, cfg)

    # -- channel creation --------------------------------------------------

    async def _apply_limits(self, name: str, cfg: api.StreamConfig) -> None:
        """Bring an existing stream in line with the limits configured now."""
        want = self._stream_limits(self.limits.for_channel(name),
                                   family=name in self.family_patterns)
        if all(getattr(cfg, k) == v for k, v in want.items()):
            return
        for k, v in want.items():
            setattr(cfg, k, v)
        try:
            await self.jsm.update_stream(cfg)
            log.info("channel=%s limits updated: %s", name, want)
        except Exception as e:
            log.error("channel=%s limits could not be updated: %s", name, _api_text(e))

    @staticmethod
    def _stream_limits(lim: ChannelLimits, family: bool = False) -> dict:
        # JetStream refuses a duplicate window longer than the max age.
        window = min(DUPLICATE_WINDOW, lim.max_age) if lim.max_age else DUPLICATE_WINDOW
        # Consumers are STAN subscriptions: nats-server (2.15) gives a stream
        # without max_consumers a default of 1000, which stopped a fleet at 1000
        # devices, each holding a durable on devices.releases. The STAN limit
        # (max_subs) is ours to enforce: with identities it counts per identity,
        # so the channel's total may exceed it and JetStream must not refuse.
        # A family's max_msgs is per channel (per subject); its bytes and age
        # limits are family-wide: JetStream has no per-subject ones.
        msgs = {"max_msgs": -1, "max_msgs_per_subject": lim.max_msgs or -1} if family \
            else {"max_msgs": lim.max_msgs or -1}
        return {**msgs, "max_bytes": lim.max_bytes or -1,
                "max_age": float(lim.max_age or 0), "duplicate_window": float(window),
                "max_consumers": UNLIMITED_CONSUMERS}

    def limits_for(self, name: str) -> ChannelLimits:
        return self.limits.for_channel(name)

    def lookup_or_create(self, name: str) -> Channel:
        """The channel, creating its stream in the background if new. Raises ChannelError."""
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        check_channel(name)
        max_channels = self.limits.max_channels
        # The registry channel is ours, not the user's: it does not count.
        used = len(self.channels) - (REGISTRY_CHANNEL in self.channels)
        if max_channels and name != REGISTRY_CHANNEL and used >= max_channels:
            raise ChannelError(E.ERR_TOO_MANY_CHANNELS)  # Go's text, without the limit
        # The registry announces every channel, so it keeps a stream of its own.
        pattern = None if name == REGISTRY_CHANNEL else \
            families.family_of(self.family_patterns, name)
        if pattern is not None:
            return self._family_channel(pattern, name, announce=True)
        fut = asyncio.get_running_loop().create_future()
        ch = Channel(name, self.subjects.stream_for(name), self.subjects.store_subject(name), fut)
        self.channels[name] = ch
        asyncio.create_task(self._create_stream(ch))
        return ch

    def family_channel(self, name: str) -> Channel | None:
        """A family channel known or not (restoring its subscriptions), without
        announcing it; None if the name is in no family."""
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        pattern = families.family_of(self.family_patterns, name)
        if pattern is None or name == REGISTRY_CHANNEL:
            return None
        return self._family_channel(pattern, name, announce=False)

    def _family_channel(self, pattern: str, name: str, *, announce: bool) -> Channel:
        fam = self.families.get(pattern)
        if fam is None:
            fut = asyncio.get_running_loop().create_future()
            fam = Family(pattern, self.subjects.stream_for(pattern),
                         self.subjects.store_subject(pattern), fut)
            self.families[pattern] = fam
            asyncio.create_task(self._create_family_stream(fam))
        ch = Channel(name, fam.stream, self.subjects.store_subject(name), fam.ready,
                     family=pattern)
        ch.fresh = True
        # Not in the family's listing at load (or created since): no message
        # stored, so perhaps never announced (its first server died first).
        # Announced now if asked, else before its first store (_pump).
        ch.unannounced = True
        self.channels[name] = ch
        if announce:
            self._start_announcing(ch)
        return ch

    def _start_announcing(self, ch: Channel) -> None:
        if not ch.announcing:
            ch.announcing = True
            asyncio.create_task(self._announce_family_channel(ch))

    async def _announce_family_channel(self, ch: Channel) -> None:
        """Store the channel's registry entry, then let its stores go; if it
        cannot be stored, its queued publishes are refused (the next one
        tries again): a message stored unannounced would never reach a
        service that discovers channels in the registry."""
        try:
            await asyncio.shield(ch.ready)
            error = await self._announce(ch.name)
        except Exception as e:  # the family's stream is not there: as a store would fail
            error = str(e)
        ch.announcing = False
        if not error:
            ch.unannounced = False
            self._pump(ch)
            return
        log.error("channel=%s not announced: %s", ch.name, error)
        self._refuse(ch.queue, f"channel {ch.name!r} not announced: {error}")
        self._maybe_resume()

    async def ensure(self, name: str) -> Channel:
        ch = self.lookup_or_create(name)
        if not ch.ready.done():
            await asyncio.shield(ch.ready)
        if ch.ready.exception() is not None:
            raise ch.ready.exception()
        return ch

    def _stream_config(self, name: str, description: str, subject: str, limits: dict,
                       metadata: dict) -> api.StreamConfig:
        """A channel's stream, or a family's: the same settings but for their limits."""
        return api.StreamConfig(
            name=name,
            description=description[:1024],
            subjects=[subject],
            retention=api.RetentionPolicy.LIMITS,
            **limits,
            discard=api.DiscardPolicy.OLD,
            storage=self.storage,
            num_replicas=self.replicas,
            allow_direct=True,
            metadata={**metadata, "stan_cluster": self.subjects.cluster_id},
        )

    def _refuse_waiting(self, ch: Channel, err: ChannelError) -> None:
        """PubAck with `err` every publish held until the channel's stream existed."""
        self._refuse(ch.waiting, str(err))

    def _refuse(self, held: deque, error: str) -> None:
        """PubAck with `error` every publish held there (a channel's waiting or queue)."""
        while held:
            reply, guid, _, owner = held.popleft()
            self._waiting -= 1
            self.answered(owner)
            self._pub_ack(reply, guid, error)

    def _store_waiting(self, ch: Channel) -> None:
        """Store, in order, every publish held until the channel's stream existed."""
        while ch.waiting:
            reply, guid, data, owner = ch.waiting.popleft()
            self._waiting -= 1
            self._store(ch, reply, guid, data, owner)

    async def _create_stream(self, ch: Channel) -> None:
        cfg = self._stream_config(ch.stream, f"STAN channel {ch.name}", ch.store_subject,
                                  self._stream_limits(self.limits.for_channel(ch.name)),
                                  {"stan_channel": ch.name})
        try:
            # Announced first: a stream found at a restart or a takeover is
            # not announced again, so its entry must be stored before it exists.
            if ch.name != REGISTRY_CHANNEL:
                error = await self._announce(ch.name)
                if error:
                    raise ChannelError(f"not announced: {error}")
            info = await self.jsm.add_stream(cfg)
        except Exception as e:  # JetStream refused: tell every waiting publisher
            log.error("channel=%s stream=%s cannot be created: %s", ch.name, ch.stream, e)
            self.channels.pop(ch.name, None)
            err = ChannelError(f"cannot create channel {ch.name!r}: {_api_text(e)}")
            ch.ready.set_exception(err)
            ch.ready.exception()  # mark retrieved: waiters may be none
            self._refuse_waiting(ch, err)
            self._maybe_resume()
            return
        log.info("channel=%s created (stream %s)", ch.name, ch.stream)
        # Nothing of ours stored yet: the publishes held meanwhile go as a group.
        ch.next_seq = info.state.last_seq
        ch.ready.set_result(True)
        # Before anything that awaits: from here a new publish is stored at
        # once, so the held ones must be on their way first.
        self._store_waiting(ch)

    async def _create_family_stream(self, fam: Family) -> None:
        cfg = self._stream_config(
            fam.stream, f"STAN channel family {fam.pattern}", fam.store_subject,
            self._stream_limits(self.limits.for_channel(fam.pattern), family=True),
            {"stan_family": fam.pattern})
        members = lambda: [c for c in self.channels.values() if c.family == fam.pattern]  # noqa: E731
        try:
            info = await self.jsm.add_stream(cfg)
        except Exception as e:
            log.error("family=%s stream=%s cannot be created: %s", fam.pattern, fam.stream, e)
            self.families.pop(fam.pattern, None)
            err = ChannelError(f"cannot create channel family {fam.pattern!r}: {_api_text(e)}")
            fam.ready.set_exception(err)
            fam.ready.exception()
            for ch in members():
                self.channels.pop(ch.name, None)
                self._refuse_waiting(ch, err)
            self._maybe_resume()
            return
        log.info("family=%s created (stream %s)", fam.pattern, fam.stream)
        fam.listed_all = not info.state.messages
        fam.ready.set_result(True)
        for ch in members():
            self._store_waiting(ch)

    async def _announce(self, name: str) -> str:
        """Store the channel's entry in the registry: "" once stored, else why
        not. Stored as a publish is, with its PubAck sent to an inbox of ours."""
        try:
            registry = await self.ensure(REGISTRY_CHANNEL)
        except (ChannelError, InvalidName) as e:
            return str(e)
        self._next_token += 1
        reply = f"{self._announced_prefix}.{self._next_token}"
        answer = self._announced[reply] = asyncio.get_running_loop().create_future()
        try:
            # The guid makes a repeated announcement (e.g. after a restart) a no-op.
            self._store(registry, reply, "channel:" + name,
                        json.dumps({"channel": name}).encode())
            # The store is answered within pub_ack_timeout, by JetStream or the sweep.
            return await answer
        finally:
            self._announced.pop(reply, None)

    def _on_announced(self, subject: bytes, reply: bytes, data: bytes,
                      headers: bytes | None) -> None:
        answer = self._announced.get(subject.decode())
        if answer is None or answer.done():
            return
        try:
            answer.set_result(pb.PubAck.FromString(data).error)
        except Exception:  # not a PubAck: ours are; say so rather than hang
            answer.set_result("malformed answer to the registry store")

    # -- publish hot path --------------------------------------------------

    def _on_pub_msg(self, subject: str, reply: str, headers: bytes | None,
                    data: bytes) -> None:
        if not self.serving():
            return  # the client retries, and reaches the active instance
        try:
            pm = pb.PubMsg.FromString(data)
        except Exception:
            log.warning("malformed PubMsg on %s (%d bytes) rejected", subject, len(data))
            if reply:
                self._pub_ack(reply, "", E.ERR_INVALID_PUB_REQ)
            return
        guid = pm.guid
        channel = subject[self._pub_prefix_len:]
        if pm.subject != channel:
            self._pub_ack(reply, guid, E.ERR_INVALID_PUB_REQ)
            return
        client_id, conn_id = pm.client_id, pm.conn_id  # read once, as the payload below
        # Go answers an unknown or replaced session with the generic text.
        err = E.ERR_INVALID_PUB_REQ if self._is_known_client(client_id, conn_id) else ""
        parsed = None
        if not err and self._authorize is not None:
            parsed = parse_headers(headers)
            err = self._authorize(parsed, client_id, channel)
        if err:
            self._pub_ack(reply, guid, err)
            return
        # Only now: a publish refused by authorization proves nothing of the
        # session it names.
        self.heard(client_id, conn_id)
        if not guid:
            self._pub_ack(reply, guid, E.ERR_INVALID_PUB_REQ)
            return
        if len(guid) > DEFAULT_MAX_GUID:
            self._pub_ack(reply, guid[:DEFAULT_MAX_GUID],
                          f"stan: guid longer than {DEFAULT_MAX_GUID} bytes")
            return
        if "\r" in guid or "\n" in guid:
            # It becomes a header line of the stored message: no line breaks.
            self._pub_ack(reply, guid, "PubMsg guid contains a line break")
            return
        # Both the stored message (data + Nats-Msg-Id header) and the MsgProto that
        # delivers it must fit in one NATS message: NATS drops a connection that
        # publishes more than max_payload. (Read once: each read of a upb field
        # makes a new object. Encoded only when near the limit: 4 bytes a char at most.)
        payload = pm.data
        size = len(payload) + MSG_OVERHEAD
        if size + 4 * max(len(guid), len(channel)) > self.relay.max_payload and \
                size + max(len(guid.encode()), len(channel.encode())) > self.relay.max_payload:
            self._pub_ack(reply, guid, "stan: message too large")
            return
        owner = ""
        if self.admit is not None:
            if parsed is None:
                parsed = parse_headers(headers)
            err, owner = self.admit(parsed, channel, len(payload))
            if err:
                self._pub_ack(reply, guid, err)
                return
        ch = self.channels.get(channel)
        if ch is None:
            ch = self._new_channel_for_publish(channel, client_id, reply, guid, owner)
            if ch is None:
                return
        if ch.ready.done():
            self._store(ch, reply, guid, payload, owner)
            return
        ch.waiting.append((reply, guid, payload, owner))
        self._waiting += 1
        if self._in_flight + self._waiting >= DEFAULT_MAX_STORES_IN_FLIGHT:
            self.relay.pause()

    def _new_channel_for_publish(self, channel: str, client_id: str, reply: str, guid: str,
                                 owner: str) -> Channel | None:
        """The channel a first publish creates, or None once the refusal is answered."""
        try:
            return self.lookup_or_create(channel)
        except (ChannelError, InvalidName) as e:
            log.warning("publish client=%s channel=%r rejected: %s", client_id, channel, e)
            self.answered(owner)
            self._pub_ack(reply, guid,
                          E.ERR_INVALID_PUB_REQ if isinstance(e, InvalidName) else str(e))
            return None

    def _store(self, ch: Channel, reply: str | None, guid: str, data: bytes,
               owner: str = "") -> None:
        if ch.family is not None:
            ch.queue.append((reply, guid, data, owner))
            self._waiting += 1
            self._pump(ch)
            if self._in_flight + self._waiting >= DEFAULT_MAX_STORES_IN_FLIGHT \
                    and not self.relay.paused:
                self.relay.pause()  # one channel's publishes queue behind its store-acks
            return
        now = time.monotonic()
        n = len(data)
        ch.msgs_in += 1
        ch.bytes_in += n
        ch.last_activity = now
        self.msgs_in += 1
        self.bytes_in += n
        self._in_flight += 1
        if not ch.group:
            self._grouping.append(ch)
            self.relay.schedule_flush()
        ch.group.append((reply or "", guid, data, owner, now))
        if self._in_flight >= DEFAULT_MAX_STORES_IN_FLIGHT and not self.relay.paused:
            self.relay.pause()

    def _send_groups(self) -> None:
        """Send the stores taken since the last flush (the relay's read), each
        channel's as one group: all but the last without a reply, so JetStream
        answers one store-ack a group instead of one a message.

        The last carries Nats-Expected-Last-Sequence: the seq the stream must
        be at once the others are stored. JetStream stores it only if so, and
        that store-ack then answers the whole group. Anything else (one of the
        others deduplicated or refused, another writer in between, our count
        wrong) and it is refused or a duplicate: then every store of the group
        is sent again on its own with a reply, and the Nats-Msg-Id makes those
        already stored duplicates, so each gets its own true answer. A PubAck
        still means stored. JetStream's store-acks were a quarter of
        nats-server's CPU and a third of ours in async publish (docs/scale.md).

        The expected seq is counted here (Channel.next_seq): unknown at first
        and after any surprise, when stores go one by one until a store-ack
        tells it again."""
        grouping, self._grouping = self._grouping, []
        for ch in grouping:
            self._send_group(ch)

    def _send_group(self, ch: Channel) -> None:
        """The channel's stores taken so far, unless a group of it is in flight:
        one at a time, so that a group sent again store by store is stored
        before anything taken after it (a later group's stores but its last
        would be stored unchecked, ahead of it)."""
        if ch.group_out or not ch.group:
            return
        group, ch.group = ch.group, []
        if ch.next_seq is None or len(group) == 1:
            for entry in group:
                self._send_one(ch, entry)
            return
        ch.group_out = True
        last = len(group) - 1
        subject = ch.store_subject_b
        out = []
        for i in range(last):
            hdr = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % group[i][1].encode()
            data = group[i][2]
            out.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (
                subject, len(hdr), len(hdr) + len(data), hdr, data))
        reply, guid, data, owner, started = group[last]
        ch.next_seq += len(group)
        ch.sent += len(group)
        self._next_token += 1
        token = b"%d" % self._next_token
        self._pending[token] = _PendingStore(reply, guid, started, owner, own=ch,
                                             no=ch.sent, group=group, sent_at=started,
                                             wait=RESEND_AFTER)
        hdr = b"NATS/1.0\r\nNats-Msg-Id: %s\r\nNats-Expected-Last-Sequence: %d\r\n\r\n" % (
            guid.encode(), ch.next_seq - 1)
        out.append(b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            subject, self._ack_prefix_b, token, len(hdr), len(hdr) + len(data), hdr, data))
        self.relay.send(b"".join(out))

    def _group_answered(self, ch: Channel) -> None:
        """Its group in flight is settled: what the channel took meanwhile goes."""
        ch.group_out = False
        self._send_group(ch)

    def _send_one(self, ch: Channel, entry: tuple) -> None:
        """One store with its own store-ack."""
        reply, guid, data, owner, started = entry
        ch.sent += 1
        if ch.next_seq is not None:
            ch.next_seq += 1
        self._next_token += 1
        token = b"%d" % self._next_token
        # The HPUB in one formatting: this runs once per message.
        hdr = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % guid.encode()
        raw = b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            ch.store_subject_b, self._ack_prefix_b, token, len(hdr), len(hdr) + len(data),
            hdr, data)
        self._pending[token] = _PendingStore(reply, guid, started, owner, own=ch, no=ch.sent,
                                             raw=raw, sent_at=time.monotonic(),
                                             wait=RESEND_AFTER, mark=self._next_token)
        self.relay.send(raw)

    def _pump(self, ch: Channel) -> None:
        """Store a family channel's next queued message, if none is in flight."""
        if ch.storing or not ch.queue or self.channels.get(ch.name) is not ch:
            return
        if ch.unannounced:
            self._start_announcing(ch)  # then pumped
            return
        if ch.last_seq is None and ch.fresh:
            ch.fresh = False
            fam = self.families.get(ch.family)
            if fam is not None and fam.listed_all:
                # No message when the stream was listed or created, and we stored
                # none since: 0, stored expecting no message on the subject, so
                # another writer's message fails the store (and we read the
                # counter then). A fleet's first connect made 20,000 lookups here.
                ch.last_seq, ch.last_sseq = 0, 0
        if ch.last_seq is None:
            if not ch.loading:
                ch.loading = True
                asyncio.create_task(self._load_seq(ch))
            return
        reply, guid, data, owner = ch.queue.popleft()
        self._waiting -= 1
        self._in_flight += 1
        ch.storing = True
        self._next_token += 1
        token = b"%d" % self._next_token
        now = time.monotonic()
        seq = ch.last_seq + 1
        ch.msgs_in += 1
        ch.bytes_in += len(data)
        ch.last_activity = now
        self.msgs_in += 1
        self.bytes_in += len(data)
        hdr = (b"NATS/1.0\r\nNats-Msg-Id: %s\r\n%s: %d\r\n%s: %d\r\n\r\n" % (
            guid.encode(), families.SEQ_HEADER.encode(), seq, families.EXPECT_HEADER.encode(),
            ch.last_sseq))
        raw = b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            ch.store_subject_b, self._ack_prefix_b, token, len(hdr), len(hdr) + len(data),
            hdr, data)
        self._pending[token] = _PendingStore(reply or "", guid, now, owner, ch, seq,
                                             raw=raw, sent_at=now, wait=RESEND_AFTER,
                                             mark=self._next_token)
        self.relay.send(raw)

    async def _load_seq(self, ch: Channel) -> None:
        """A family channel's counter, from its last stored message (lazily:
        30,000 channels are not read at start-up).

        A lookup that times out is asked again until pub_ack_timeout, the time
        a store is given: it is a read, and a busy nats-server (a fleet
        reconnecting after a restart: 10,000 first publishes, one lookup
        each) answered 92 of them late, whose devices then backed off for up
        to 30 s before publishing again."""
        give_up = time.monotonic() + self.pub_ack_timeout
        try:
            while True:
                try:
                    ch.last_seq, ch.last_sseq = await families.last_of(
                        self.jsm, ch.stream, ch.store_subject)
                    break
                except NatsTimeout:
                    if time.monotonic() >= give_up:
                        raise
                    log.debug("channel=%s last sequence: lookup timed out, asking again",
                              ch.name)
        except Exception as e:
            log.error("channel=%s last sequence not read: %s", ch.name, _api_text(e))
            self._refuse(ch.queue, f"cannot read channel {ch.name!r}: {_api_text(e)}")
        finally:
            ch.loading = False
        self._maybe_resume()
        self._pump(ch)

    def _family_stored(self, p: _PendingStore, data: bytes, error: str) -> str:
        """Advance a family channel's counter from a store-ack; the error to answer."""
        ch = p.channel
        ch.storing = False
        if error:
            # Another writer stored on this channel (or the store's outcome is
            # unknown): read the counter again before the next store.
            ch.last_seq = None
            if ERR_WRONG_LAST in data:
                error = "stan: channel sequence changed by another server, retry"
        else:
            try:
                ack = json.loads(data)
            except ValueError:
                ack = {}
            if not ack.get("duplicate") and ack.get("seq"):
                ch.last_seq, ch.last_sseq = p.seq, int(ack["seq"])
            elif p.resent:  # a duplicate of the first copy, or of an earlier publish
                ch.last_seq = None  # read again, which ever it was
        self._pump(ch)
        return error

    async def _settle_resent(self, p: _PendingStore) -> None:
        """Answer a family store sent again and refused as out of sequence:
        stored if the channel's last message is this one (its first copy)."""
        ch = p.channel
        try:
            sseq = await families.last_is(self.jsm, ch.stream, ch.store_subject, p.guid, p.seq)
        except Exception as e:
            log.error("channel=%s last message not read: %s", ch.name, _api_text(e))
            sseq = None
        ch.storing = False
        error = ""
        if sseq is not None:
            ch.last_seq, ch.last_sseq = p.seq, sseq
        else:
            ch.last_seq = None
            error = "stan: channel sequence changed by another server, retry"
        self._answer_store(p, error)
        self._pump(ch)

    def _maybe_resume(self) -> None:
        if self.relay.paused and \
                self._in_flight + self._waiting <= DEFAULT_RESUME_STORES_IN_FLIGHT:
            self.relay.resume()

    def _on_store_ack(self, subject: bytes, reply: bytes, data: bytes,
                      headers: bytes | None) -> None:
        """JetStream's answer to one of our stores, straight from nats-py's parser."""
        if not self.serving():
            return  # fenced: as a FencedConnection callback would not run
        p = self._pending.pop(subject[self._ack_prefix_len:], None)
        if p is None:
            return  # already answered by the timeout sweep
        error = ""
        if headers and headers.startswith(b"NATS/1.0 503"):
            error = "no JetStream stream for this channel"
        elif b'"error"' in data:
            error = _js_error_text(data)
        ch = p.channel if p.channel is not None else p.own
        if ch is not None:  # what was sent before it to its stream was answered, or lost
            token = int(subject[self._ack_prefix_len:])
            if token > self._answered_upto.get(ch.stream, 0):
                self._answered_upto[ch.stream] = token
        if p.group is not None:
            self._group_stored(p, data, error)
            return
        if p.resent and error and ERR_WRONG_LAST in data and p.channel is not None:
            # Sent again, and refused because the channel moved on: by the
            # first copy, or by another writer. The channel waits while we look.
            asyncio.create_task(self._settle_resent(p))
            return
        if p.channel is not None:
            error = self._family_stored(p, data, error)
        elif p.own is not None:
            self._count_from(p, data, error)
        self._answer_store(p, error)

    def _answer_store(self, p: _PendingStore, error: str) -> None:
        """One store settled: out of the in-flight count, and its PubAck."""
        self._in_flight -= 1
        self._maybe_resume()
        self.answered(p.owner)
        if error:
            log.error("store failed guid=%s: %s", p.guid, error)
        elif self._on_stored is not None:
            self._on_stored(time.monotonic() - p.started)
        if p.reply:
            self.inline.publish(p.reply, self._pub_ack_bytes(p.guid, error))

    def _count_from(self, p: _PendingStore, data: bytes, error: str) -> None:
        """Learn or drop the expected seq of p's channel from p's store-ack."""
        ch = p.own
        if self.channels.get(ch.name) is not ch:
            return
        if error or b'"duplicate"' in data:
            ch.next_seq = None  # the stream did not move as counted
        elif ch.next_seq is None:
            try:
                seq = int(json.loads(data)["seq"])
            except (ValueError, KeyError, TypeError):
                return
            # Every store sent after p lands after it, if stored as counted.
            ch.next_seq = seq + ch.sent - p.no

    def _group_stored(self, p: _PendingStore, data: bytes, error: str) -> None:
        """A group's store-ack: every store of it answered, or all sent again."""
        ch = p.own
        if error or b'"duplicate"' in data:
            log.debug("channel=%s group of %d not stored as counted (%s): sent again one by one",
                      ch.name, len(p.group), error or "duplicate")
            self._send_group_again(ch, p.group, time.monotonic())
            return
        self._in_flight -= len(p.group)
        self._maybe_resume()
        self._group_answered(ch)
        now = time.monotonic()
        on_stored = self._on_stored
        answered = self.answered
        acks = []
        for reply, guid, _, owner, started in p.group:
            answered(owner)
            if on_stored is not None:
                on_stored(now - started)
            if reply:  # a guid fits in a PubAck: longer ones were refused
                acks.append((reply, pub_ack.encode(guid)))
        self.inline.publish_many(acks)

    def _send_group_again(self, ch: Channel, group: list, started: float | None = None) -> None:
        """Every store of a group on its own, each with a reply: the Nats-Msg-Id
        makes those already stored duplicates, so each gets its true answer.
        The count is unknown until one of them tells it; what the channel took
        meanwhile goes after them. `started` restarts their timeouts."""
        if self.channels.get(ch.name) is ch:
            ch.next_seq = None
        for reply, guid, data, owner, first in group:
            self._send_one(ch, (reply, guid, data, owner, started or first))
        self._group_answered(ch)

    def _pub_ack(self, reply: str | None, guid: str, error: str) -> None:
        """A PubAck that answers no store (a refusal): on the relay, written at once."""
        if reply:
            self.relay.publish(reply, self._pub_ack_bytes(guid, error))

    def _pub_ack_bytes(self, guid: str, error: str) -> bytes:
        ack = pub_ack.encode(guid, error)
        if len(ack) > self.relay.max_payload:
            ack = pub_ack.encode("", error)  # a guid this long cannot be echoed in one NATS message
        return ack

    def _resend_lost_stores(self, now: float) -> None:
        """Send again the stores lost (a later store of their stream was
        answered) or unanswered for their wait (doubled each time); a group
        unanswered for its wait, store by store (its late answer is ignored)."""
        upto = self._answered_upto
        for token, p in list(self._pending.items()):
            ch = p.channel if p.channel is not None else p.own
            if ch is None:
                continue
            if p.group is not None:
                if now - p.sent_at >= p.wait:
                    log.debug("channel=%s group of %d unanswered for %.0fs: sent again one by "
                              "one", ch.name, len(p.group), now - p.sent_at)
                    del self._pending[token]
                    self._send_group_again(ch, p.group)
                continue
            if not p.raw:
                continue
            lost = p.mark < upto.get(ch.stream, 0)
            if lost or now - p.sent_at >= p.wait:
                log.debug("channel=%s store of guid=%s %s: sent again", ch.name, p.guid,
                          "lost" if lost else f"unanswered for {now - p.started:.0f}s")
                p.sent_at, p.mark, p.resent = now, self._next_token, True
                if not lost:
                    p.wait *= 2
                self.relay.send(p.raw)

    async def _sweep_pending(self) -> None:
        """Answer publishes whose store-ack never came (JetStream down or leader lost)."""
        while True:
            await asyncio.sleep(1.0)
            self._resend_lost_stores(time.monotonic())
            cutoff = time.monotonic() - self.pub_ack_timeout
            while self._pending:
                token = next(iter(self._pending))
                p = self._pending[token]
                if p.started > cutoff:
                    break
                del self._pending[token]
                if p.channel is not None:  # stored or not: read the counter again
                    p.channel.storing = False
                    p.channel.last_seq = None
                    self._pump(p.channel)
                if p.own is not None:  # stored or not: the count is unknown
                    p.own.next_seq = None
                    if p.group is not None:
                        self._group_answered(p.own)
                for reply, guid, _, owner, _ in p.group or ((p.reply, p.guid, b"", p.owner, 0),):
                    self._in_flight -= 1
                    self.answered(owner)
                    log.error("store of guid=%s timed out", guid)
                    if reply:
                        self._pub_ack(reply, guid, "timeout storing the message")
            self._maybe_resume()

    async def _reap_inactive(self) -> None:
        """Delete channels that had neither messages nor subscriptions for their
        max_inactivity (offline durables count as subscriptions)."""
        lim = self.limits
        while True:
            await asyncio.sleep(1.0)
            if not lim.defaults.max_inactivity and \
                    not any(c.max_inactivity for c in lim.per_channel.values()):
                continue  # no channel can go: not 30,000 limit lookups a second for nothing
            now = time.monotonic()
            for ch in list(self.channels.values()):
                if ch.max_inactivity is None:
                    ch.max_inactivity = lim.for_channel(ch.name).max_inactivity
                limit = ch.max_inactivity
                if not limit or not ch.ready.done() or now - ch.last_activity < limit:
                    continue
                if self._has_subscriptions(ch.name):
                    ch.last_activity = now
                    continue
                try:
                    if ch.family is not None:
                        if await self._has_consumers(ch):
                            ch.last_activity = now
                            continue
                        # Gone from the table first: a publish meanwhile starts anew.
                        self.channels.pop(ch.name, None)
                        await self.jsm.purge_stream(ch.stream, subject=ch.store_subject)
                        log.info("channel=%s deleted after %.0fs of inactivity", ch.name, limit)
                        continue
                    info = await self.jsm.stream_info(ch.stream)
                    if info.state.consumer_count:
                        ch.last_activity = now
                        continue
                    await self.jsm.delete_stream(ch.stream)
                except Exception as e:
                    log.error("channel=%s inactivity check failed: %s", ch.name, _api_text(e))
                    continue
                self.channels.pop(ch.name, None)
                log.info("channel=%s deleted after %.0fs of inactivity", ch.name, limit)

    async def _has_consumers(self, ch: Channel) -> bool:
        """Does a consumer (an offline durable) filter on this family channel?
        A listing of the family's consumers: only for a channel due to be reaped."""
        return any(c.config.filter_subject == ch.store_subject
                   for c in await consumers_of(self.jsm, ch.stream))


async def consumers_of(jsm, stream: str) -> list:
    """Every consumer of a stream (JetStream lists them a page at a time)."""
    found = []
    while True:
        batch = await jsm.consumers_info(stream, offset=len(found))
        if not batch:
            return found
        found += batch


def _js_error_text(data: bytes) -> str:
    try:
        err = json.loads(data).get("error") or {}
        return err.get("description") or str(err)
    except ValueError:
        return "JetStream error"


def _api_text(e: Exception) -> str:
    if isinstance(e, APIError):
        return e.description or str(e)
    return str(e) or type(e).__name__
