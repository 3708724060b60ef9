"""`stanfleet streaming-server`: run the server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from ..signals import stop_event
from .options import add_arguments, from_args
from .server import StreamingServer

log = logging.getLogger("stanfleet.streaming")


def configure(p: argparse.ArgumentParser) -> None:
    add_arguments(p)


async def serve(args: argparse.Namespace) -> int:
    opts = from_args(args)
    verbose = opts.debug or opts.trace
    logging.getLogger("stanfleet").setLevel(logging.DEBUG if verbose else logging.INFO)
    server = StreamingServer(opts)
    await server.start()
    await stop_event().wait()
    log.info("shutting down")
    await server.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        # uvloop (the `fast` extra) cuts the per-message cost of the event loop.
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))
