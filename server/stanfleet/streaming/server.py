"""The streaming server: STAN client protocol in, JetStream underneath.

Wires the parts together and answers the request subjects: discover
(connect), subscribe, unsubscribe, subscription close, close and pings.
Every request is decoded defensively: a malformed protobuf gets an error
response where there is a reply subject and a log line otherwise, and the
server keeps serving.

Long because it is the one place each STAN request subject is routed and
answered, and the one place the parts are started and stopped (directly, or
at takeover in an FT group: ft.py); the work behind each handler lives in
clients, channels and subscriptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from .. import ordered_flush
from ..broker import Broker
from ..pb import protocol_pb2 as pb
from . import authz, families
from . import errors as E
from .channels import REGISTRY_CHANNEL, ChannelStore
from .clients import ClientInfo, ClientRegistry
from .connects import ConnectQueue, PendingConnect
from .embedded import nats_tls, start_broker
from .handshake import accepted, ping_settings, session_response
from .jsapi import stream_names_on
from .naming import InvalidName, Subjects, check_client_id, check_subject
from .options import ServerOptions
from .quotas import QuotaExceeded, Quotas
from .relay import Relay, parse_headers
from .revocation import RevocationWatch
from .state import StateStore
from .subscriptions import SubscriptionManager
from .subscriptions import _group_key as group_key

log = logging.getLogger("stanfleet.streaming")

REQUEST_LIMITS = {"pending_msgs_limit": 100_000, "pending_bytes_limit": 256 * 1024 * 1024}
# Subscription requests handled at once. Each waits on JetStream (consumer,
# registration), so one at a time made a fleet resubscribing after a restart
# queue behind itself; subscriptions.py locks per durable, not globally.
DEFAULT_SUB_CONCURRENCY = 256
UNLISTED_CHECKS = 64  # stream lookups in flight while restoring (_check_listing)


class _Request:
    """A request read on the relay, shaped as the handlers read a nats-py Msg."""
    __slots__ = ("subject", "reply", "data", "headers")

    def __init__(self, subject: str, reply: str, headers: bytes | None, data: bytes):
        self.subject, self.reply, self.data = subject, reply, data
        self.headers = parse_headers(headers)


class ChannelsUnlisted(Exception):
    """JetStream's stream listing left out a channel that exists (leaders being elected)."""


class StreamingServer:
    def __init__(self, options: ServerOptions, broker: Broker | None = None, early=None):
        self.opts = options
        self.subjects = Subjects(options.cluster_id)
        self.broker: Broker | None = broker  # an embedded nats-server started for us
        self.early = early  # early.EarlyLayer: requests that came before we were ready
        self._workers: list[tuple[bytes, asyncio.Task, asyncio.Queue]] = []  # relay requests
        self.nc: NATS | None = None
        self.channels: ChannelStore | None = None
        self.relay: Relay | None = None
        # STAN requests other than publishes, when the early layer's connection
        # for them was adopted (early.py); on self.nc otherwise.
        self.requests: Relay | None = None
        self.subs: SubscriptionManager | None = None
        self.clients: ClientRegistry | None = None
        self.monitor = None  # Monitor, when opts.monitor_port is set
        self.monitor_port: int | None = None
        self.ft = None  # FaultTolerance, when opts.ft_group is set
        self._nats_subs = []
        self.started = 0.0
        self._closed = asyncio.Event()
        self._stopping = False
        # Per-identity authorization (docs/security-design.md); None: off.
        self.authz = authz.Authorizer() if options.authz else None
        # Per-identity quotas (quotas.py): they need identities, so authz.
        self.quotas = Quotas(options.quotas) if self.authz and options.quotas else None
        self._refusals: dict[tuple, int] = {}
        self.connects = ConnectQueue()  # connects being registered, one per clientID
        self._tasks: set[asyncio.Task] = set()  # connects' registrations, among others
        self.revocations = None  # RevocationWatch, with --security-dir

    @property
    def nats_url(self) -> str:
        return self.opts.nats_url or (self.broker.url if self.broker else "")

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Serve; in an FT group, stand by until this instance holds the lease."""
        if self.opts.monitor_port is not None or self.opts.https_port is not None:
            # Imported here: aiohttp and prometheus_client cost nothing unless -m is given.
            from .monitor import Monitor
            self.monitor = Monitor(self)
        if not self.opts.nats_url and self.broker is None:
            self.broker = self._start_embedded_broker()
        await self._connect()
        if self.opts.ft_group:
            await self._stand_by()
            return
        await self._activate(self.nc)

    async def _connect(self) -> None:
        # A comma-separated list names several servers of one cluster.
        servers = [u.strip() for u in self.nats_url.split(",") if u.strip()]
        tls = nats_tls(self.opts)
        # "ready" follows a flush() after the request subscriptions: it must
        # mean they reached nats-server (ordered_flush.py).
        ordered_flush.install()
        self.nc = await nats.connect(**tls,
            servers=servers, name=f"_STAN-{self.opts.cluster_id}", user=self.opts.user,
            password=self.opts.password, token=self.opts.token, max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, pending_size=64 * 1024 * 1024,
            error_cb=self._on_nats_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect)

    async def _stand_by(self) -> None:
        """Connected and watching the lease, not subscribed to any STAN subject."""
        from .ft import FaultTolerance, Lease
        lease = Lease(self.nc, self.opts.cluster_id, self.opts.ft_group,
                      lease=self.opts.ft_lease, storage=self.opts.store,
                      replicas=self.opts.replicas)
        await lease.open()
        self.ft = FaultTolerance(lease, activate=self._activate, deactivate=self._deactivate)
        await self._start_monitor()
        log.info("streaming server standing by: cluster=%s ft_group=%s nats=%s",
                 self.opts.cluster_id, self.opts.ft_group, self.nats_url)
        self.ft.start(self.nc)

    @property
    def active(self) -> bool:
        """Serving STAN requests: always, unless a standby (or fenced) in an FT group."""
        return self.ft is None or self.ft.active

    def _serving(self) -> bool:
        return self.ft is None or self.ft.lease.valid()

    async def _activate(self, nc) -> None:
        """Load channels, clients and subscriptions from JetStream and start serving.

        In an FT group nc is fenced (ft.FencedConnection): nothing it receives is
        served once the lease may have lapsed."""
        # The publish hot path reads PubMsgs on a raw connection of its own
        # (relay.py), same login; in an FT group what it reads is fenced too
        # (ChannelStore.serving).
        servers = [u.strip() for u in self.nats_url.split(",") if u.strip()]
        self.relay = Relay(servers, user=self.opts.user, password=self.opts.password,
                           token=self.opts.token, tls=nats_tls(self.opts).get("tls"),
                           name=f"_STAN-{self.opts.cluster_id}-relay")
        # The early layer's connections become the relay's and the requests'
        # (early.py): the STAN subjects stay subscribed through the handover,
        # and what came meanwhile waits, in order, for the release below. The
        # requests have a connection of their own, not the relay's: that one
        # stops reading while JetStream falls behind (channels.py), and a
        # connect or ping must not wait for that.
        handover = self.early.handover() if self.early else None
        self.early = None
        if handover is not None:
            pubs, requests, answered, replaced = handover
            self.requests = Relay(servers, user=self.opts.user, password=self.opts.password,
                                  token=self.opts.token,
                                  name=f"_STAN-{self.opts.cluster_id}-requests")
            await asyncio.gather(self.relay.adopt(pubs), self.requests.adopt(requests))
        else:
            await self.relay.connect()
        self.clients = ClientRegistry(nc, hb_interval=self.opts.hb_interval,
                                      hb_timeout=self.opts.hb_timeout,
                                      hb_fail_count=self.opts.hb_fail_count,
                                      on_dead=self._client_dead)
        self.channels = ChannelStore(nc, self.subjects, storage=self.opts.store,
                                     replicas=self.opts.replicas, limits=self.opts.limits,
                                     pub_ack_timeout=self.opts.pub_ack_timeout,
                                     is_known_client=self.clients.check,
                                     has_subscriptions=self._has_subscriptions,
                                     on_stored=self.monitor.on_stored if self.monitor else None,
                                     authorize=self._authorize_publish if self.authz else None,
                                     relay=self.relay,
                                     families=self.opts.channel_families)
        self.channels.serving = self._serving
        self.channels.heard = self.clients.heard_from
        self.state = StateStore(nc, self.opts.cluster_id, storage=self.opts.store,
                                replicas=self.opts.replicas)
        self.subs = SubscriptionManager(nc, self.subjects, self.channels, self.state)
        self.subs.replace_durable = self.opts.replace_durable
        if self.authz:
            self.subs.ack_gate = self._authorize_ack
            self.subs.count_channel_subs = self._own_subs_on
        if self.quotas:
            self.channels.admit = self._admit_publish
            self.channels.answered = self.quotas.published
        if self.authz and self.opts.security_dir:
            self.revocations = RevocationWatch(self.opts.security_dir, self._end_revoked)
        # Together: start-up time is mostly round trips to JetStream.
        await asyncio.gather(self.state.open(), self.channels.start())
        await self._restore(replaced if handover is not None else {})
        if handover is not None:
            await self._register_early(answered, replaced)
        await self.channels.serve()
        await self.subs.start()
        s = self.subjects
        sub_slots = asyncio.Semaphore(DEFAULT_SUB_CONCURRENCY)
        for subject, handler in ((s.discover, self._on_connect),
                                 (s.pings, self._on_ping),
                                 (s.sub, self._concurrent(self._on_subscribe, sub_slots)),
                                 (s.unsub, self._concurrent(self._on_unsubscribe, sub_slots)),
                                 (s.subclose, self._concurrent(self._on_subclose, sub_slots)),
                                 (s.close, self._on_close)):
            if handover is not None:  # on the adopted subscriptions, one worker each
                self._workers.append(self._relay_worker(subject, self._guarded(handler)))
            else:
                self._nats_subs.append(
                    await nc.subscribe(subject, cb=self._guarded(handler), **REQUEST_LIMITS))
        await self.nc.flush()
        if handover is not None:
            # Publishes first: what a client sent before its close, say, came first.
            held = self.relay.release() + self.requests.release()
            log.info("answered %d connect requests before we were ready; taking over %d "
                     "requests that came before we were ready", len(answered), held)
        self.clients.start()
        if self.revocations:
            self.revocations.start()
        self.started = time.time()
        if self.monitor_port is None:  # an FT standby started it already
            await self._start_monitor()
        log.info("streaming server ready: cluster=%s nats=%s store=%s", self.opts.cluster_id,
                 self.nats_url, self.opts.store)

    async def _register_early(self, answered: list, replaced: dict) -> None:
        """The sessions early.py accepted, registered and written (as _register
        does) before any other request is handled: the first of their
        publishes must find them. With the file store early.py wrote them
        before answering (the handover awaited that), and _restore read them;
        where one replaced a dead session (early.py made Go's liveness check),
        _restore took the old session back and it is ended here as
        _replace_then_register ends it, its record excepted: that is the new
        session's already."""
        for req in answered:
            if req.client_id in replaced:
                log.info("client=%s replaced (old session did not answer)", req.client_id)
                await self._end_session(req.client_id, keep_record=True)
            log.debug("client=%s connected (protocol %d, before we were ready)", req.client_id,
                      req.protocol)
            if req.client_id in self.clients.clients:
                continue  # file store: early.py wrote it, _restore read it back
            info = _session(req, req.heartbeat_inbox)
            self.clients.add(info)
            if req.client_id not in replaced:  # written by early.py otherwise
                await self.state.save_client(info.client_id, info.record(None))

    def _relay_worker(self, subject: str, handler) -> tuple:
        """Requests of one subject read on the relay, handled one at a time in
        their order, as a nats-py subscription's callback is."""
        queue: asyncio.Queue = asyncio.Queue()
        limit = REQUEST_LIMITS["pending_msgs_limit"]

        def take(subj: str, reply: str, headers: bytes | None, payload: bytes) -> None:
            if queue.qsize() >= limit:  # nats-py drops a slow consumer's messages too
                log.warning("request on %s dropped: %d waiting", subj, limit)
                return
            queue.put_nowait(_Request(subj, reply, headers, payload))

        async def work() -> None:
            while True:
                msg = await queue.get()
                try:
                    await handler(msg)
                finally:
                    queue.task_done()
        sid = self.requests.subscribe(subject, take)
        return sid, asyncio.create_task(work()), queue

    async def _stop_relay_workers(self) -> None:
        """As a drain: no new requests, those received are still handled."""
        if not self._workers:
            return
        for sid, _, _ in self._workers:
            self.requests.unsubscribe(sid)
        try:
            await self.requests.ping()
            await asyncio.wait_for(asyncio.gather(*(q.join() for _, _, q in self._workers)), 5)
        except Exception as e:
            log.warning("requests did not drain: %s", e)
        for _, task, _ in self._workers:
            task.cancel()
        self._workers.clear()

    async def _deactivate(self) -> None:
        """Undo an activation that failed halfway, so it can be tried again."""
        for sub in self._nats_subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        self._nats_subs.clear()
        for part in (self.clients, self.channels, self.subs):
            if part is not None:
                try:
                    await part.stop()
                except Exception as e:
                    log.warning("stopping %s: %s", type(part).__name__, e)
        self.clients = self.channels = self.subs = None

    async def _start_monitor(self) -> None:
        if not self.monitor:
            return
        # With a server certificate every port is TLS, monitoring included
        # (-m as well as Go's -ms).
        ctx = None
        port = self.opts.https_port if self.opts.https_port is not None \
            else self.opts.monitor_port
        if self.opts.tls_cert:
            from ..security.certs import server_context_files

            ctx = server_context_files(self.opts.tls_cert, self.opts.tls_key)
        host, guard = self._monitor_access()
        self.monitor_port = await self.monitor.start(host, port, ctx, guard)
        log.info("monitoring on %s://%s:%d%s", "https" if ctx else "http", host,
                 self.monitor_port, " (basic auth)" if guard else "")

    def _monitor_access(self):
        """(host, guard): with a credentials store every request authenticates
        (monitor_auth.py); without one the endpoints answer on loopback only."""
        if self.opts.security_dir:
            from .monitor_auth import CredsChecker, basic_auth

            return self.opts.host, basic_auth(CredsChecker(
                os.path.join(self.opts.security_dir, "creds.json")))
        return "127.0.0.1", None

    async def _restore(self, replaced: dict) -> None:
        """Take over the clients and subscriptions of an earlier run, except
        the sessions of users whose credentials were revoked meanwhile.

        replaced: clientID -> the record of a session early.py replaced. The
        bucket holds the new session's record by then, but the subscriptions
        kept there are the old session's (they name the clientID alone), so
        the old session is restored with them, to be ended as a replaced one
        (_register_early): its plain subscriptions must not pass to the new."""
        users = self.revocations.users() if self.revocations else None
        clients, subs = await asyncio.gather(self.state.load_clients(),
                                             self.state.load_subs())
        clients = [replaced.get(r.get("client_id"), r) for r in clients]
        for r in clients:
            if users is not None and r.get("owner") and r["owner"] not in users:
                log.warning("client=%s user=%s not restored: credentials revoked",
                            r.get("client_id"), r["owner"])
                await self.state.delete_client(str(r.get("client_id", "")))
                continue
            try:
                if self.authz and r.get("owner"):
                    self.authz.claim(r["client_id"], authz.Identity("", r["owner"]))
                self.clients.add(ClientInfo(
                    client_id=r["client_id"], conn_id=bytes.fromhex(r["conn_id"]),
                    hb_inbox=r["hb_inbox"], protocol=r["protocol"],
                    ping_interval=r["ping_interval"], ping_max_out=r["ping_max_out"],
                    created=r.get("created", time.time())))
            except (KeyError, ValueError, TypeError):
                log.error("unreadable client record %r dropped", r)
        await self._check_listing(subs)
        subs = await self.subs.restore(subs, self.clients.clients)
        if self.quotas:  # the durables quota counts the restored ones again
            for m in self.subs.members.values():
                owner = self.authz.owners.get(m.client_id)
                if m.durable_name and owner:
                    self.quotas.durable_added(authz.Identity("", owner), m.group.key)
        if self.clients.clients or subs:
            log.info("restored %d clients and %d subscriptions", len(self.clients.clients), subs)

    async def _check_listing(self, subs: list[dict]) -> None:
        """Raise if a channel a subscription names exists but was not listed.

        A stream listing taken while JetStream elects leaders (a NATS node just
        died) can leave streams out; restore would then drop their durables as
        if the channel were gone. Failing instead lets the caller try again (an
        FT takeover does; a plain start exits and is restarted).

        Many in flight: a family channel with durables but no message yet is
        not listed (its family's stream lists subjects with messages), and a
        fleet has 10,000 such cfg channels: one by one they took 17 s."""
        sem = asyncio.Semaphore(UNLISTED_CHECKS)

        async def check(name: str) -> None:
            async with sem:
                try:
                    await self.channels.jsm.stream_info(self.subjects.stream_for(name))
                except NotFoundError:
                    return  # no stream of its own: restore drops or re-attaches its subs
            raise ChannelsUnlisted(f"channel {name} exists but JetStream did not list it")

        names = {r.get("channel") for r in subs} - set(self.channels.channels) - {None, ""}
        own, in_family = [], set()
        for name in names:
            pattern = families.family_of(self.channels.family_patterns, name)
            (own.append(name) if pattern is None or name == REGISTRY_CHANNEL
             else in_family.add(pattern))
        # A family channel has a stream of its own only if it was made before
        # families were on: one question per family finds any such stream
        # the listing missed, instead of one per channel (10,000 cfg channels).
        listed = {ch.stream for ch in self.channels.channels.values()} | \
            {f.stream for f in self.channels.families.values()}
        for pattern in in_family:
            subject = self.subjects.store_subject(pattern)
            for stream in await stream_names_on(self.channels.jsm, subject):
                if stream not in listed:
                    raise ChannelsUnlisted(f"stream {stream} of family {pattern} exists but "
                                           f"JetStream did not list it")
        await asyncio.gather(*(check(n) for n in own))

    async def _end_revoked(self, users: set[str]) -> None:
        """End every session of a user no longer in the credentials store."""
        for user, client_ids in list(self.authz.sessions.items()):
            if user in users:
                continue
            for client_id in list(client_ids):
                if self.clients.remove(client_id) is not None:
                    log.warning("client=%s user=%s session ended: credentials revoked",
                                client_id, user)
                await self._forget_client(client_id)

    def _has_subscriptions(self, channel: str) -> bool:
        # A server that may not be the active one deletes nothing: say yes.
        if not self._serving():
            return True
        return self.subs.subs_per_channel.get(channel, 0) > 0

    async def _end_session(self, client_id: str, *, keep_record: bool = False) -> None:
        """A replaced session: gone from the registry, then as if it had closed
        (durables kept, offline, as Go keeps them)."""
        self.clients.remove(client_id)
        await self._forget_client(client_id, keep_record=keep_record)

    async def _forget_client(self, client_id: str, *, keep_record: bool = False) -> None:
        if self.authz:
            self.authz.release(client_id)
        try:
            await self.subs.remove_client(client_id)
        finally:  # a subscription's record that could not go does not keep the client's
            if not keep_record:
                await self.state.delete_client(client_id)

    def _start_embedded_broker(self) -> Broker:
        broker = start_broker(self.opts)
        log.info("embedded nats-server listening on %s:%s", self.opts.host, broker.port)
        return broker

    async def stop(self) -> None:
        """Graceful: stop taking requests, answer in-flight publishes, then the broker.
        Safe to call more than once."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        try:
            if self.monitor:
                await self.monitor.stop()
            for sub in self._nats_subs:
                try:
                    # drain, not unsubscribe: requests already received are
                    # still answered before anything below goes away.
                    await sub.drain()
                except Exception:
                    pass
            self._nats_subs.clear()
            await self._stop_relay_workers()
            if self._tasks:  # requests being handled: let them finish, briefly
                await asyncio.wait(set(self._tasks), timeout=5)
            for task in list(self._tasks):
                task.cancel()
            if self.revocations:
                await self.revocations.stop()
            if self.clients:
                await self.clients.stop()
            if self.channels:
                await self.channels.stop()
            if self.relay:
                await self.relay.close()
            if self.requests:
                await self.requests.close()
            if self.subs:
                await self.subs.stop()
            if self.ft:
                await self.ft.stop()  # after the drain: the lease covered it
            if self.nc and not self.nc.is_closed:
                try:
                    await self.nc.drain()
                except Exception:
                    await self.nc.close()
        finally:
            if self.broker:
                self.broker.stop()
                self.broker = None
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def until_stopped(self, stop: asyncio.Event) -> None:
        """Wait for stop; in an FT group raise ft.LeaseLost if the lease goes first."""
        waiting = asyncio.ensure_future(stop.wait())
        lost = self.ft.lost if self.ft else asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait({waiting, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if lost.done() and not lost.cancelled():
            lost.result()

    async def _on_nats_error(self, e: Exception) -> None:
        log.error("nats: %s", e)

    async def _on_disconnect(self) -> None:
        if not self._stopping:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        log.info("reconnected to NATS at %s", self.nc.connected_url.netloc if self.nc else "?")

    # -- request plumbing ----------------------------------------------------------

    def _guarded(self, handler):
        trace = self.opts.trace

        async def run(msg: Msg) -> None:
            if trace:
                log.debug("trace <- %s reply=%s %d bytes: %s", msg.subject, msg.reply,
                          len(msg.data), msg.data[:200].hex())
            try:
                await handler(msg)
            except Exception:
                # A bug must not take the subscription down with it.
                log.exception("handler for %s failed", msg.subject)
        return run

    def _concurrent(self, handler, slots: asyncio.Semaphore):
        """Run each request in its own task, at most `slots` at once; when all
        are taken the subscription waits, which is the back pressure."""
        tasks: set = self._tasks

        async def spawn(msg: Msg) -> None:
            await slots.acquire()

            async def run() -> None:
                try:
                    await handler(msg)
                except Exception:
                    log.exception("handler for %s failed", msg.subject)
                finally:
                    slots.release()
            t = asyncio.create_task(run())
            tasks.add(t)  # a task nobody references may be garbage-collected mid-run
            t.add_done_callback(tasks.discard)
        return spawn

    async def _respond(self, msg: Msg, response) -> None:
        # A request that began while we held the FT lease may end after it
        # lapsed: unanswered, the client asks again and reaches the new active.
        if msg.reply and self._serving():
            await self.nc.publish(msg.reply, response.SerializeToString())

    def _decode(self, msg: Msg, cls):
        try:
            return cls.FromString(msg.data)
        except Exception:
            log.warning("malformed %s on %s (%d bytes) rejected", cls.__name__, msg.subject,
                        len(msg.data))
            return None

    # -- authorization -----------------------------------------------------------------

    def _check(self, op: str, msg: Msg, client_id: str, *checks) -> authz.Identity | None:
        """The caller's identity after the checks pass; None when authorization is off.
        Raises authz.Denied, logged here."""
        if self.authz is None:
            return None
        who = None
        try:
            who = self.authz.identify(msg.headers)
            for check in checks:
                check(who)
        except authz.Denied as e:
            log.warning("%s client=%s user=%s refused: %s", op, client_id,
                        who.user if who else "?", e)
            raise
        return who

    def _authorize_publish(self, headers, client_id: str, channel: str) -> str:
        err = self.authz.publish_error(headers, client_id, channel)
        if err:
            self._log_refusal("publish", client_id, channel, err)
        return err

    def _authorize_ack(self, headers, client_id: str) -> bool:
        try:
            self.authz.check_owns(self.authz.identify(headers), client_id)
            return True
        except authz.Denied as e:
            self._log_refusal("ack", client_id, "", str(e))
            return False

    def _admit_publish(self, headers, channel: str, nbytes: int) -> tuple[str, str]:
        """('' or the quota refusal, the publisher) for a publish authz let through."""
        try:
            who = self.authz.identify(headers)
            self.quotas.admit_publish(who, nbytes, channel not in self.channels.channels)
        except (authz.Denied, QuotaExceeded) as e:
            self._log_refusal("publish", "", channel, str(e))
            return str(e), ""
        return "", who.user

    def _own_subs_on(self, channel, client_id: str) -> int:
        """The subscriptions on channel held by client_id's identity: max_subs
        counts per identity, so no identity fills a shared channel."""
        owner = self.authz.owners.get(client_id)
        if owner is None:
            return self.subs.held_on(client_id, channel.name)
        return sum(self.subs.held_on(cid, channel.name)
                   for cid in self.authz.sessions.get(owner, ()))

    def _held_subs(self, user: str) -> int:
        return sum(len(self.subs.by_client.get(cid, ()))
                   for cid in self.authz.sessions.get(user, ()))

    def _log_refusal(self, op: str, client_id: str, channel: str, err: str) -> None:
        # A hostile publisher can repeat a refused publish at line rate: log the
        # first and then every 1000th, not each one.
        key = (op, client_id, channel)
        n = self._refusals.get(key, 0) + 1
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[key] = n
        if n == 1 or n % 1000 == 0:
            log.warning("%s client=%s channel=%s refused (%d times): %s", op, client_id,
                        channel, n, err)

    # -- connect / close -------------------------------------------------------------

    async def _on_connect(self, msg: Msg) -> None:
        req = self._decode(msg, pb.ConnectRequest)
        if req is None:
            return await self._respond(msg, pb.ConnectResponse(error=E.ERR_INVALID_CONN_REQ))
        try:
            check_client_id(req.client_id)
        except InvalidName as e:
            log.warning("connect refused: %s", e)
            return await self._respond(msg, pb.ConnectResponse(error=E.ERR_INVALID_CLIENT_ID))
        try:
            check_subject(req.heartbeat_inbox, "heartbeat inbox")
        except InvalidName as e:
            log.warning("connect refused: %s", e)
            return await self._respond(msg, pb.ConnectResponse(error=E.ERR_INVALID_CONN_REQ))
        try:
            who = self._check(
                "connect", msg, req.client_id,
                lambda w: authz.check_client_id(w, req.client_id),
                lambda w: authz.check_inbox(w, req.heartbeat_inbox, "heartbeat inbox"))
        except authz.Denied as e:
            return await self._respond(msg, pb.ConnectResponse(error=str(e)))
        hb_inbox = self.authz.inbox_for(who, req.heartbeat_inbox) if who else req.heartbeat_inbox
        if self.quotas and who is not None:
            try:
                self.quotas.admit_connect(who)
            except QuotaExceeded as e:
                self._log_refusal("connect", req.client_id, "", str(e))
                return await self._respond(msg, pb.ConnectResponse(error=str(e)))
        old = self.clients.clients.get(req.client_id)
        if old is not None and who is not None and \
                self.authz.owners.get(req.client_id, who.user) != who.user:
            # Another identity's session: not even a liveness check, so it can
            # never be replaced by someone else, dead or alive.
            log.warning("connect client=%s user=%s refused: the session belongs to another "
                        "identity", req.client_id, who.user)
            return await self._respond(msg, pb.ConnectResponse(
                error=f"stan: not authorized: clientID {req.client_id} belongs to another identity"))
        pending = self.connects.pending.get(req.client_id)
        if pending is not None:
            if pending.same_session(bytes(req.conn_id), hb_inbox):
                # The client's retry of a connect we are still registering
                # (it timed out waiting): one registration answers both.
                return self.connects.join(pending, msg.reply)
            # One liveness check per clientID at a time; a storm of connects
            # for it is answered at once instead of queueing checks.
            return await self._respond(msg, pb.ConnectResponse(error=E.ERR_INVALID_CLIENT))
        if old is not None and req.conn_id and bytes(req.conn_id) == old.conn_id and \
                hb_inbox == old.hb_inbox:
            # A retry of a session registered after its client stopped waiting
            # for the answer: the same session, so no liveness check (its
            # client would answer it, and be refused as a duplicate of
            # itself) and no replacement (a KV purge and write each).
            log.info("client=%s connect retried: answered with its session", req.client_id)
            return await self._respond(msg, self._connect_response(old))
        # The rest waits on the network (a liveness check of up to
        # dup_check_timeout, the registration's KV write): run it beside the
        # other requests, not in front of them, one at a time per clientID.
        p = self.connects.begin(req.client_id, bytes(req.conn_id), hb_inbox, msg.reply)
        task = asyncio.create_task(self._replace_then_register(p, req, who, hb_inbox, old))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace_then_register(self, p: PendingConnect, req, who, hb_inbox: str,
                                     old: ClientInfo | None) -> None:
        try:
            async with self.connects.slot(p) as in_time:
                if not in_time:
                    return  # its client gave up; the retry comes in a new one
                # Liveness check of the registered client: the original server's rule.
                if old is not None and await self.clients.is_alive(old,
                                                                   self.opts.dup_check_timeout):
                    log.warning("connect client=%s refused: already registered and alive",
                                req.client_id)
                    return await self._answer(p, pb.ConnectResponse(error=E.ERR_INVALID_CLIENT))
                if old is not None and self.clients.clients.get(req.client_id) is old:
                    log.info("client=%s replaced (old session did not answer)", req.client_id)
                    await self._end_session(req.client_id)
                await self._register(p, req, who, hb_inbox)
        except Exception:
            log.exception("connect client=%s failed", req.client_id)
        finally:
            self.connects.end(p)

    async def _answer(self, p: PendingConnect, response) -> None:
        """The same answer to a connect and its retries."""
        if self._serving():
            data = response.SerializeToString()
            for reply in p.replies:
                await self.nc.publish(reply, data)

    def _connect_response(self, info: ClientInfo) -> pb.ConnectResponse:
        return session_response(self.subjects, info.ping_interval, info.ping_max_out)

    async def _register(self, p: PendingConnect, req, who, hb_inbox: str) -> None:
        if req.client_id in self.clients.clients:
            return await self._answer(p, pb.ConnectResponse(error=E.ERR_INVALID_CLIENT))
        if req.conn_id and bytes(req.conn_id) in self.clients.by_conn_id:
            # Pings name the session by conn_id alone: it must stay unique.
            log.warning("connect client=%s refused: conn_id already in use", req.client_id)
            return await self._answer(p, pb.ConnectResponse(error=E.ERR_INVALID_CONN_REQ))
        info = _session(req, hb_inbox)
        self.clients.add(info)
        if who is not None:
            self.authz.claim(info.client_id, who)
        try:
            await self.state.save_client(info.client_id, info.record(who.user if who else None))
        except Exception as e:
            self.clients.remove(info.client_id)
            if who is not None:
                self.authz.release(info.client_id)
            log.error("client=%s cannot be registered: %s", info.client_id, e)
            return await self._answer(p, pb.ConnectResponse(error=f"stan: store error: {e}"))
        log.debug("client=%s connected (protocol %d)%s", req.client_id, req.protocol,
                  f" user={who.user}" if who else "")
        await self._answer(p, accepted(self.subjects, req))

    async def _on_close(self, msg: Msg) -> None:
        req = self._decode(msg, pb.CloseRequest)
        if req is None:
            return await self._respond(msg, pb.CloseResponse(error=E.ERR_INVALID_CLOSE_REQ))
        try:
            self._check("close", msg, req.client_id,
                        lambda w: self.authz.check_owns(w, req.client_id))
        except authz.Denied as e:
            return await self._respond(msg, pb.CloseResponse(error=str(e)))
        if self.clients.remove(req.client_id) is None:
            return await self._respond(msg, pb.CloseResponse(error=E.ERR_UNKNOWN_CLIENT))
        await self._forget_client(req.client_id)
        log.debug("client=%s closed", req.client_id)
        await self._respond(msg, pb.CloseResponse())

    async def _client_dead(self, info: ClientInfo) -> None:
        if not self._serving():
            return  # the registration is the active server's to remove, not ours
        await self._forget_client(info.client_id)

    async def _on_ping(self, msg: Msg) -> None:
        req = self._decode(msg, pb.Ping)
        if req is None:
            return await self._respond(msg, pb.PingResponse(error="stan: invalid ping request"))
        info = self.clients.by_conn_id.get(bytes(req.conn_id))
        if info is None:
            return await self._respond(msg, pb.PingResponse(error=E.ERR_REPLACED))
        try:
            self._check("ping", msg, info.client_id,
                        lambda w: self.authz.check_owns(w, info.client_id))
        except authz.Denied as e:
            return await self._respond(msg, pb.PingResponse(error=str(e)))
        self.clients.seen(info)
        await self._respond(msg, pb.PingResponse())

    # -- subscriptions -----------------------------------------------------------------

    async def _on_subscribe(self, msg: Msg) -> None:
        req = self._decode(msg, pb.SubscriptionRequest)
        if req is None:
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_INVALID_SUB_REQ))
        try:
            who = self._check("subscribe", msg, req.client_id,
                              lambda w: self.authz.check_owns(w, req.client_id),
                              lambda w: authz.check_subscribe(w, req.subject, req.inbox))
        except authz.Denied as e:
            return await self._respond(msg, pb.SubscriptionResponse(error=str(e)))
        if who is not None:
            req.inbox = self.authz.inbox_for(who, req.inbox)
            if req.q_group:
                # Queue groups are per identity: nobody joins another's group
                # to take a share of its messages.
                req.q_group = f"{who.user}:{req.q_group}"
        if req.client_id not in self.clients.clients:
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_UNKNOWN_CLIENT))
        durable_key = group_key(req, "") if req.durable_name else None
        if self.quotas and who is not None:
            try:
                self.quotas.admit_subscription(who, self._held_subs(who.user), durable_key,
                                               req.subject not in self.channels.channels)
            except QuotaExceeded as e:
                log.warning("subscribe client=%s channel=%r refused: %s", req.client_id,
                            req.subject, e)
                return await self._respond(msg, pb.SubscriptionResponse(error=str(e)))
        try:
            member = await self.subs.subscribe(req)
        except E.StanProtocolError as e:
            log.warning("subscribe client=%s channel=%r refused: %s", req.client_id, req.subject, e)
            return await self._respond(msg, pb.SubscriptionResponse(error=str(e)))
        except InvalidName as e:
            log.warning("subscribe client=%s refused: %s", req.client_id, e)
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_INVALID_SUBJECT))
        except ValueError as e:
            log.warning("subscribe client=%s refused: %s", req.client_id, e)
            return await self._respond(msg, pb.SubscriptionResponse(error=f"stan: {e}"))
        except Exception as e:  # JetStream refused the consumer
            log.error("subscribe client=%s channel=%r failed: %s", req.client_id, req.subject, e)
            return await self._respond(msg, pb.SubscriptionResponse(error=f"stan: {e}"))
        if self.quotas and who is not None and durable_key is not None:
            self.quotas.durable_added(who, durable_key)
        # Debug, as Go's: a fleet's 20,000 subscribes were 5% of our CPU as lines.
        log.debug("client=%s subscribed channel=%s durable=%r queue=%r sub=%s", req.client_id,
                 req.subject, req.durable_name, req.q_group, member.sub_id)
        await self._respond(msg, pb.SubscriptionResponse(ack_inbox=member.ack_inbox))
        await self.subs.start_delivery(member)

    async def _on_unsubscribe(self, msg: Msg) -> None:
        await self._end_subscription(msg, unsubscribe=True)

    async def _on_subclose(self, msg: Msg) -> None:
        await self._end_subscription(msg, unsubscribe=False)

    async def _end_subscription(self, msg: Msg, *, unsubscribe: bool) -> None:
        req = self._decode(msg, pb.UnsubscribeRequest)
        if req is None:
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_INVALID_UNSUB_REQ))
        try:
            who = self._check("unsubscribe" if unsubscribe else "subclose", msg, req.client_id,
                              lambda w: self.authz.check_owns(w, req.client_id))
        except authz.Denied as e:
            return await self._respond(msg, pb.SubscriptionResponse(error=str(e)))
        if req.client_id not in self.clients.clients:
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_UNKNOWN_CLIENT))
        member = self.subs.find(req.client_id, req.inbox)
        if member is None and who is not None:
            member = self.subs.find(req.client_id, self.authz.inbox_for(who, req.inbox))
        if member is None or member.channel != req.subject:
            return await self._respond(msg, pb.SubscriptionResponse(error=E.ERR_UNKNOWN_SUB))
        await self.subs.remove(member, unsubscribe=unsubscribe)
        if self.quotas and who is not None and unsubscribe and member.durable_name \
                and not member.group.members:
            self.quotas.durable_deleted(self.authz.owners.get(req.client_id, who.user),
                                        member.group.key)
        log.debug("client=%s %s channel=%s sub=%s", req.client_id,
                  "unsubscribed" if unsubscribe else "closed subscription", req.subject,
                  member.sub_id)
        await self._respond(msg, pb.SubscriptionResponse())


def _session(req: pb.ConnectRequest, hb_inbox: str) -> ClientInfo:
    """The session a ConnectRequest registers, answered by the server or, before
    it was ready, by early.py."""
    ping_interval, ping_max_out = ping_settings(req)
    return ClientInfo(client_id=req.client_id, conn_id=bytes(req.conn_id), hb_inbox=hb_inbox,
                      protocol=req.protocol, ping_interval=ping_interval,
                      ping_max_out=ping_max_out)
