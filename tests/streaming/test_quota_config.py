"""The `quotas` section of the -sc limits file: one documented place to change
the per-identity quotas (streaming/quotas.py), with one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from stanfleet.streaming.options import add_arguments, from_args
from stanfleet.streaming.quotas import DEFAULT_QUOTAS, Bucket, QuotaError, load


def _opts(*argv: str):
    import argparse
    p = argparse.ArgumentParser()
    add_arguments(p)
    return from_args(p.parse_args(list(argv)))


def test_defaults_without_a_file():
    assert _opts().quotas == DEFAULT_QUOTAS
    assert _opts("--no-quotas").quotas is None


def test_a_kind_or_a_role_is_changed_field_by_field(tmp_path):
    f = tmp_path / "limits.json"
    f.write_text(json.dumps({"store_limits": {"max_channels": 10},
                             "quotas": {"device": {"msgs_per_sec": 50},
                                        "listener": {"subscriptions": 200000}}}))
    q = _opts("-sc", str(f)).quotas
    assert q["device"].msgs_per_sec == 50
    assert q["device"].subscriptions == DEFAULT_QUOTAS["device"].subscriptions
    assert q["listener"].subscriptions == 200000
    assert q["listener"].msgs_per_sec == DEFAULT_QUOTAS["service"].msgs_per_sec


@pytest.mark.parametrize("quotas, text", [
    ({"device": {"msgs_per_secc": 1}}, "unknown msgs_per_secc"),
    ({"device": {"subscriptions": -1}}, "must be a number >= 0"),
    ({"device": {"subscriptions": "many"}}, "must be a number >= 0"),
    ({"device": 5}, "must be an object"),
])
def test_invalid_quotas_are_refused(tmp_path, quotas, text):
    f = tmp_path / "limits.json"
    f.write_text(json.dumps({"quotas": quotas}))
    with pytest.raises(QuotaError, match=text):
        load(str(f))


def test_the_command_says_so_in_one_line(tmp_path):
    f = tmp_path / "limits.json"
    f.write_text(json.dumps({"quotas": {"device": {"durables": -3}}}))
    r = subprocess.run([sys.executable, "-m", "stanfleet.cli", "streaming-server", "-sc", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "durables must be a number" in r.stderr


def test_bucket_allows_its_burst_then_its_rate():
    b = Bucket(10)
    assert sum(b.take() for _ in range(100)) == 50  # five seconds of burst
    assert not b.take()
