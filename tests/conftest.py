"""Shared fixtures: every integration test runs against a real nats-server
(with JetStream) on a random port, so tests can run in parallel."""

from __future__ import annotations

import pytest
from stanfleet import ordered_flush
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.streaming import ServerOptions, StreamingServer

from .pg import make_postgres_server, pg_url, postgres_server  # noqa: F401  (a real PostgreSQL)

# The tests' own nats-py clients too: `subscribe(); await flush()` must mean
# the subscription is in place before another connection publishes.
ordered_flush.install()


@pytest.fixture
def broker(tmp_path):
    """A fresh nats-server with JetStream, storing under the test's tmp dir."""
    b = Broker(BrokerConfig(store_dir=str(tmp_path / "js"), log_file=str(tmp_path / "nats.log")))
    b.start()
    yield b
    b.stop()


class RunningStan:
    """What tests need to reach a running streaming server."""

    def __init__(self, server: StreamingServer):
        self.server = server
        self.nats_url = server.nats_url
        self.cluster_id = server.opts.cluster_id


@pytest.fixture
async def make_stan_server(broker):
    """Factory: start our streaming server in-process on the test's broker.

    Options default to the server's defaults; pass e.g. hb_interval=0.2 to
    exercise heartbeats quickly."""
    started = []

    async def start(**options) -> RunningStan:
        opts = ServerOptions(nats_url=broker.url, **options)
        server = StreamingServer(opts)
        await server.start()
        started.append(server)
        return RunningStan(server)

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def stan_server(make_stan_server):
    """Our streaming server (cluster 'test-cluster') on a fresh nats-server."""
    return await make_stan_server()
