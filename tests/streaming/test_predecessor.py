"""predecessor.reclaim ends only a nats-server whose owner is gone and that
serves our store (the killed-owner case: test_restart.py)."""

from __future__ import annotations

import os

from stanfleet.broker import Broker, BrokerConfig
from stanfleet.streaming import predecessor


def test_a_nats_server_whose_owner_lives_or_that_serves_another_store_is_left_alone(tmp_path):
    store = tmp_path / "data" / "jetstream"
    store.mkdir(parents=True)
    b = Broker(BrokerConfig(store_dir=str(store))).start()
    try:
        data = str(tmp_path / "data")
        predecessor.record(data, b.proc.pid)  # owner: this test process, alive
        predecessor.reclaim(data, str(store), grace=0.1)
        assert b.proc.poll() is None
        with open(os.path.join(data, predecessor.OWNER_FILE), "w") as f:
            f.write(f"{b.proc.pid} 999999999\n")  # owner gone, but another store
        predecessor.reclaim(data, str(tmp_path / "elsewhere"), grace=0.1)
        assert b.proc.poll() is None
    finally:
        b.stop()
