"""Start the server fast: the embedded nats-server comes up while we import.

From exec to `_STAN.discover` answered, most of the time is Python importing
nats-py, protobuf and (with -m) aiohttp, and nats-server opening its port and
JetStream. Neither needs the other: a thread imports while the main thread
spawns nats-server and waits for its port. (Not the other way round: the
kernel's parent-death signal that ties nats-server to us follows the thread
that spawned it, so the spawning thread must live as long as we do.) So
nats-server is up well before the imports are done, and what is left to
wait for is our own CPU time: what is not needed before serving is not
imported, and the garbage collector stays off while importing (collect_from_now).

Where the early layer may answer connects itself (early.may_answer: our
own nats-server), being ready does not wait for the imports at all:
nats-server up, the early layer subscribed, protobuf imported (and with the
file store the clients bucket asked, and a registered clientID's old session
or a missing bucket dealt with there too). The importer starts only after
that, so that it does not take the GIL from the way to the first answer.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import threading
import time

from ..errors import CommandError
from .options import ServerOptions

log = logging.getLogger("stanfleet.streaming")

# asyncio (~36 ms of CPU here) is imported where it is used: the importer
# thread loads it with nats-py, off the main thread's way to spawning
# nats-server, so the port opens that much sooner.

DEFAULT_STARTUP_SWITCH_INTERVAL = 0.0005  # seconds (Python's default: 0.005)
DEFAULT_FIRST_CONNECT_WAIT = 0.05  # seconds the imports wait for a first connect to be decided
HEAVY_MODULES = ("stanfleet.streaming.server",)
MONITOR_MODULES = ("stanfleet.streaming.monitor",)


# What nats-py imports only for something it can do without (each import
# failing into its fallback), hidden while it loads: aiohttp (120 ms) for ws://
# URLs, imported for real afterwards when -m asks for the monitor; and
# importlib.metadata (with email, zipfile, csv: ~10 ms of CPU here) to read
# its own version for CONNECT, which _dist_version finds by a directory listing.
HIDDEN_FROM_NATS = ("aiohttp", "importlib.metadata")


def _dist_version(module_file: str, dist: str) -> str | None:
    """The version in the name of `dist`'s NAME-VERSION.dist-info folder, found
    in the site-packages folder that holds module_file (package/sub/module.py)."""
    site = os.path.dirname(os.path.dirname(os.path.dirname(module_file)))
    try:
        names = os.listdir(site)
    except OSError:
        return None
    for name in names:
        if name.startswith(dist + "-") and name.endswith(".dist-info"):
            return name[len(dist) + 1:-len(".dist-info")]
    return None


class _Importer(threading.Thread):
    def __init__(self, modules: tuple[str, ...]):
        super().__init__(name="imports", daemon=True)
        self.modules = modules
        self.error: BaseException | None = None

    def run(self) -> None:
        hidden = [name for name in HIDDEN_FROM_NATS if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # `import name` raises ImportError
        try:
            client = importlib.import_module("nats.aio.client")
            client.__version__ = _dist_version(client.__file__, "nats_py") or client.__version__
        except BaseException as e:
            self.error = e
        finally:
            for name in hidden:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
        try:
            for name in self.modules:
                importlib.import_module(name)
        except BaseException as e:  # re-raised in the main thread
            self.error = e

    def done(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def forward_signals(broker) -> None:
    """Go's `-sl reload` (SIGHUP) and `-sl reopen` (SIGUSR1) reach the embedded
    nats-server (config reload, log reopen); SIGUSR1 also reopens our log file."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()

    def reopen() -> None:
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.FileHandler):
                h.close()  # the next record opens the file again
        if broker is not None and broker.proc is not None:
            broker.proc.send_signal(signal.SIGUSR1)

    def reload() -> None:
        if broker is not None and broker.proc is not None:
            broker.proc.send_signal(signal.SIGHUP)
        else:
            log.info("reload: no embedded nats-server to reload")

    loop.add_signal_handler(signal.SIGUSR1, reopen)
    loop.add_signal_handler(signal.SIGHUP, reload)


def run_plain_nats(opts: ServerOptions) -> int:
    """A NATS cluster member and nothing more (embedded.plain_nats_only)."""
    from ..signals import stop_event
    from .embedded import start_broker

    broker = start_broker(opts)
    log.warning("NATS cluster member on %s:%s (routes %s): no streaming service here, "
                "JetStream in a NATS cluster needs --clustered", opts.host, broker.port,
                ",".join(opts.routes) or "none")

    async def wait() -> None:
        collect_from_now()
        forward_signals(broker)
        stop = stop_event()
        # Only now: a script that signals us once it reads this must find
        # SIGTERM handled (a clean stop, exit 0), not the default (killed).
        log.info("streaming server ready: plain NATS only")
        await stop.wait()

    import asyncio

    try:
        asyncio.run(wait())
    finally:
        broker.stop()
    return 0


def collect_from_now() -> None:
    """Garbage collection back on once the imports are done (off since exec:
    cli.main), with what they made (modules, classes: they live as long as we
    do) frozen out of its reach: all of it is in the youngest generation, and
    the first collection would walk it (~15 ms here) just as the first clients
    are answered. Not later: restoring a large store makes garbage."""
    gc.freeze()
    gc.enable()
    gc.callbacks.append(_after_collection)


SLOW_COLLECTION = 0.1  # seconds: a full collection this long is worth a line
_collection_started = 0.0


def _after_collection(phase: str, info: dict) -> None:
    """What survived a full collection is frozen out of the next one's reach.

    A full collection walks every tracked object and holds every client's
    traffic meanwhile: with 10,000 devices' sessions and subscriptions it
    took up to 976 ms, a dozen times while they connected. Right after one
    there is no cyclic garbage left, so freezing leaks nothing collectable
    now; the next one walks only what came since. The price: state that is
    alive now and later dies in a reference cycle is not reclaimed (our
    sessions' and subscriptions' records hold no cycles)."""
    global _collection_started
    if info["generation"] != 2:
        return
    if phase == "start":
        _collection_started = time.perf_counter()
        return
    gc.freeze()
    took = time.perf_counter() - _collection_started
    if took >= SLOW_COLLECTION:
        logging.getLogger("stanfleet.streaming").warning(
            "a full garbage collection held the server for %.0f ms", took * 1e3)


def _run_loop(main) -> int:
    """uvloop (the `fast` extra) when installed: it cuts the event loop's cost per message."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    return uvloop.run(main)


def _lease_lost(e: Exception) -> bool:
    from .ft import LeaseLost  # here: only an FT group imports ft

    return isinstance(e, LeaseLost)


def run_server(opts: ServerOptions) -> int:
    from .embedded import plain_nats_only

    if plain_nats_only(opts):
        return run_plain_nats(opts)
    modules = HEAVY_MODULES
    if opts.monitor_port is not None or opts.https_port is not None:
        modules += MONITOR_MODULES
    from .early import may_answer, start_early
    from .embedded import start_broker  # before the thread starts: no wait for the GIL

    importer = _Importer(modules)
    # Where the early layer answers connects (early.may_answer), being ready
    # is nats-server up, the early layer subscribed and protobuf imported
    # (with the file store, and the clients bucket asked: a registered
    # clientID's old session too, a missing bucket created): the importer
    # starts after, not to take the GIL from that path. Elsewhere being ready
    # waits for the imports, so they start first, beside nats-server.
    answer = not opts.nats_url and may_answer(opts)
    answer_first = answer
    # Short GIL slices while the importer runs: the main thread must subscribe
    # the moment nats-server is up, and the early layer answer at once, not
    # when the importer lets go.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(DEFAULT_STARTUP_SWITCH_INTERVAL)
    if not answer_first:
        importer.start()
    broker = None
    if not opts.nats_url:
        broker = start_broker(opts)
    # A standby (--ft_group) must take no request: they are the active one's.
    early = None if opts.ft_group else start_early(opts, broker)  # serves until we take over
    if answer:
        if early is not None:
            # protobuf (~15 ms) for its answers: only now, so that no connect
            # meets "no responders" for longer than nats-server takes to open
            # its port (those that come meanwhile are held, then answered).
            # Measured, not in a thread beside nats-server's start: that one
            # took the GIL from the spawn, and the port opened later.
            early.answer_from_now(importlib.import_module("stanfleet.streaming.handshake"))
    if broker is not None:
        log.info("embedded nats-server listening on %s:%s", opts.host, broker.port)
    if answer_first:
        if early is not None:
            # The first connect first: the importer would take the cores and
            # the GIL from its answer, and from nats-server, whose JetStream
            # round trips (the file store's bucket, old session and write) it
            # waits on. A harness connects the moment the port is open; where
            # nobody does, the imports lose at most this long.
            early.first_decided(DEFAULT_FIRST_CONNECT_WAIT)
        importer.start()
    try:
        importer.done()
        # Not before: the early layer's thread answers connects meanwhile.
        sys.setswitchinterval(switch)
        collect_from_now()
        from ..signals import stop_event
        from .server import StreamingServer

        async def serve() -> int:
            forward_signals(broker)  # before "ready" is logged: a script may signal then
            server = StreamingServer(opts, broker=broker, early=early)
            await server.start()
            try:
                await server.until_stopped(stop_event())  # ft.LeaseLost: another is active
            finally:
                log.info("shutting down")
                await server.stop()
            return 0

        try:
            return _run_loop(serve())
        except Exception as e:
            if opts.ft_group and _lease_lost(e):
                raise CommandError(str(e)) from None
            raise
    finally:
        if broker is not None:
            broker.stop()
