"""A subscribe whose reply is lost after the server registered it.

Found at scale (`stanfleet up --devices 200`, secure): the device's request
for its cfg durable timed out while the streaming server had registered the
subscription, so the durable was held by a subscription the device did not
know, and every retry in that session was refused with "duplicate durable
registration", forever. The device now closes the session on that refusal
and opens a new one; the server drops the closed session's subscriptions and
the new session resumes the durable.

Deterministic: a NATS-aware proxy between the device and nats-server holds
the reply to the device's first subscription request until the device has
given up on it (its request timed out and it logged the failure).
"""

from __future__ import annotations

import asyncio
import contextlib

from conftest import FACTORY
from stanfleet.fleet.runner import FleetRunner

DEV = "D0B1"
SUB_PREFIX = b"_STAN.sub."  # the streaming server's subscription requests (naming.py)
DISCOVER_PREFIX = b"_STAN.discover."  # its connect requests


class ReplyHoldingProxy:
    """Forwards one NATS connection at a time, frame by frame; holds the
    server's replies to the first ``hold`` subscription requests the client
    sends (``held`` is set once all are held) until ``release()``."""

    def __init__(self, upstream: tuple[str, int], hold: int = 1, prefix: bytes = SUB_PREFIX):
        self.upstream = upstream
        self.prefix = prefix  # of the request subjects whose replies are held
        self.port: int | None = None
        self.held = asyncio.Event()
        self._hold = hold
        self._replies: set[bytes] = set()  # reply subjects of the first SUB requests
        self._released = False
        self._frames: list[bytes] = []
        self._down_writer: asyncio.StreamWriter | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def release(self) -> None:
        """Deliver the held reply now: late, to a request the client gave up on."""
        self._released = True
        for f in self._frames:
            self._down_writer.write(f)
        self._frames.clear()

    async def _accept(self, dr, dw) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        ur, uw = await asyncio.open_connection(*self.upstream)
        self._down_writer = dw
        try:
            await asyncio.gather(self._pipe(dr, uw, self._client_frame),
                                 self._pipe(ur, dw, self._server_frame))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            dw.transport.abort()
            uw.transport.abort()

    async def _pipe(self, src, dst, look) -> None:
        # A frame is a control line, plus "<payload>\r\n" for PUB and MSG
        # (whose last field is the payload's size).
        while True:
            line = await src.readuntil(b"\r\n")
            frame = line
            if line.startswith((b"PUB ", b"MSG ")):
                frame += await src.readexactly(int(line.split()[-1]) + 2)
            if look(line):
                dst.write(frame)
                await dst.drain()
            else:
                self._frames.append(frame)
                if len(self._frames) == self._hold:
                    self.held.set()

    def _client_frame(self, line: bytes) -> bool:
        p = line.split()
        if len(self._replies) < self._hold and p[0] == b"PUB" and p[1].startswith(self.prefix):
            self._replies.add(p[2])
        return True

    def _server_frame(self, line: bytes) -> bool:
        """False: hold this frame."""
        p = line.split()
        return not (p[0] == b"MSG" and not self._released and p[1] in self._replies)


@contextlib.asynccontextmanager
async def device_behind_proxy(stan_server, releases, tmp_path, hold: int,
                              prefix: bytes = SUB_PREFIX):
    """The device, connected through a proxy that holds the replies to its
    first `hold` requests on subjects starting with `prefix` (subscriptions
    by default); (fleet, proxy) once they are held."""
    nats_port = int(stan_server.nats_url.rsplit(":", 1)[1])
    proxy = ReplyHoldingProxy(("127.0.0.1", nats_port), hold=hold, prefix=prefix)
    await proxy.start()
    fleet = FleetRunner(f"nats://127.0.0.1:{proxy.port}", stan_server.cluster_id,
                        tmp_path / "fleet", ids=[DEV], releases_dir=releases,
                        factory_version=FACTORY)
    try:
        await fleet.start()
        await asyncio.wait_for(proxy.held.wait(), 30)
        yield fleet, proxy
        assert not fleet.devices[DEV].crashes
    finally:
        await fleet.stop()
        await proxy.close()


async def test_lost_subscribe_reply_gets_a_new_session_not_duplicate_durable_forever(
        stan_server, backend, releases, tmp_path):
    # Both the request and the device's repeat of it (same inbox) go unanswered.
    async with device_behind_proxy(stan_server, releases, tmp_path, hold=2) as (fleet, proxy):
        # The server registered the cfg durable and answered; the device never
        # saw the answers and gives up after its request timeout (5 s), twice.
        await fleet.expect(DEV, f"subscribe devices.{DEV}.cfg failed error=TimeoutError",
                           timeout=30)
        proxy.release()  # the late answers change nothing: their requests are gone
        refused = await fleet.expect(DEV, "duplicate durable registration, opening a new session",
                                     timeout=30)
        assert refused
        mark = fleet.mark(DEV)
        await fleet.expect(DEV, "stanfleet: connected", since=mark, timeout=30)
        # The resumed durable delivers: a cfg change is applied and acked.
        await backend.cfg(DEV, sending_frequency=2)
        await fleet.expect(DEV, "cfg applied", since=mark, timeout=30)
        assert fleet.find(DEV, "subscribe devices.releases failed") is None


async def test_a_subscribe_reply_lost_once_is_asked_again_in_the_same_session(
        stan_server, backend, releases, tmp_path):
    """The device repeats a timed-out durable subscribe with the same inbox,
    and the server answers the repeat with the subscription it registered:
    no duplicate durable, no new session (a connect storm's cheapest way out)."""
    async with device_behind_proxy(stan_server, releases, tmp_path, hold=1) as (fleet, proxy):
        await fleet.expect(DEV, "stanfleet: connected", timeout=30)
        proxy.release()  # the late answer to the first request changes nothing
        await backend.cfg(DEV, sending_frequency=2)
        await fleet.expect(DEV, "cfg applied", timeout=30)
        assert fleet.find(DEV, "subscribe devices.") is None  # no failure logged
        assert fleet.find(DEV, "opening a new session") is None


async def test_a_connect_reply_lost_once_is_asked_again_as_the_same_session(
        stan_server, backend, releases, tmp_path):
    """A connect that timed out is asked again with the same conn_id and
    heartbeat inbox: the server answers with the session it registered (no
    liveness check, no replacement, one session)."""
    async with device_behind_proxy(stan_server, releases, tmp_path, hold=1,
                                   prefix=DISCOVER_PREFIX) as (fleet, proxy):
        await fleet.expect(DEV, "stanfleet: connected", timeout=30)
        proxy.release()
        await backend.cfg(DEV, sending_frequency=2)
        await fleet.expect(DEV, "cfg applied", timeout=30)
        assert fleet.find(DEV, "stan connect failed") is None
        assert fleet.find(DEV, "sessions=1") is not None
        assert fleet.find(DEV, "sessions=2") is None
