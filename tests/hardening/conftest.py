"""Fixtures for hostile-data tests: an in-process `stanfleet up` (no devices)."""

from __future__ import annotations

import argparse

import pytest
from stanfleet.up import Fleet


def up_args(tmp_path, **override) -> argparse.Namespace:
    args = dict(devices=0, data_dir=str(tmp_path / "data"), port=0, artifact_port=0,
                no_sim=True, cluster_id="test-cluster", plain=True, insecure=True)
    args.update(override)
    return argparse.Namespace(**args)


@pytest.fixture
async def fleet(tmp_path):
    """`stanfleet up --insecure --no-sim` started in this process: its own
    nats-server, streaming server, listener, artifact server and status table."""
    f = Fleet(up_args(tmp_path))
    try:
        await f.start()
        yield f
    finally:
        await f.stop()
