"""Shared fixtures: every integration test runs against a real nats-server
(with JetStream) on a random port, so tests can run in parallel."""

from __future__ import annotations

import pytest

from stanfleet.broker import Broker, BrokerConfig


@pytest.fixture
def broker(tmp_path):
    """A fresh nats-server with JetStream, storing under the test's tmp dir."""
    b = Broker(BrokerConfig(store_dir=str(tmp_path / "js"), log_file=str(tmp_path / "nats.log")))
    b.start()
    yield b
    b.stop()
