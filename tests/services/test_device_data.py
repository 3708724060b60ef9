"""Every parser of device data turns any bytes into a valid value or a clear
rejection, never another exception (hypothesis throws arbitrary JSON and
bytes at each), and what is kept of a rejection is bounded."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stanfleet.services import device_status, readings, registry
from stanfleet.services.readings_db import ReadingsDB
from stanfleet.services.rejections import RejectLog, rejection, safe_text

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=5),
    max_leaves=20)
big_ints = st.integers(min_value=-10**400, max_value=10**400)
iso_like = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.builds(lambda d, h: f"{d.isoformat()}{h}", st.datetimes(),
              st.sampled_from(["Z", "+01:00", "-05:00", "+23:59", "-23:59"])),
    st.text(max_size=40))
# Objects shaped like what the parsers expect, with any value in each field.
reading_like = st.fixed_dictionaries({}, optional={
    "ts": iso_like | json_values, "temp": big_ints | st.floats() | st.text() | json_values})
status_like = st.fixed_dictionaries({}, optional={
    k: json_values | big_ints for k in ("ts", "version", "slot", "image", "config",
                                        "cfg_errors", "buffer_dropped", "buffered", "ota",
                                        "mem_free")}) | st.fixed_dictionaries({
    "ota": st.fixed_dictionaries({}, optional={k: json_values for k in
                                              ("state", "version", "reason")}),
    "config": st.dictionaries(st.text(max_size=40), json_values | big_ints, max_size=40)})
payloads = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda v: json.dumps(v).encode()),
    reading_like.map(lambda v: json.dumps(v).encode()),
    status_like.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n))


@SETTINGS
@given(payloads)
def test_a_reading_is_valid_or_an_invalid_reading(payload):
    try:
        r = readings.parse(payload)
    except readings.InvalidReading as e:
        assert str(e)
        return
    assert readings.MIN_TEMP <= r.temp <= readings.MAX_TEMP
    assert r.ts.endswith("Z") and len(r.ts) == len("2026-11-25T10:00:00.000Z")
    r.ts.encode("ascii")


@SETTINGS
@given(payloads)
def test_a_status_is_valid_or_an_invalid_status(payload):
    try:
        s = device_status.parse(payload)
    except device_status.InvalidStatus as e:
        assert str(e)
        refused = device_status.from_bytes(payload)
        assert refused.rejected and refused.rejected.isprintable()
        return
    assert device_status.from_bytes(payload) == s and not s.rejected
    # Everything shown is printable text or a number: it can go to a terminal.
    for text in (s.ts, s.version or "", s.slot or "", s.image or "", s.ota.state,
                 s.ota.version or "", s.ota.reason, *s.cfg_errors,
                 *s.config, *(v for v in s.config.values() if isinstance(v, str))):
        assert isinstance(text, str) and text.isprintable()
        text.encode("utf-8")  # no lone surrogate
    for n in (s.buffer_dropped, s.buffered, s.mem_free or 0):
        assert isinstance(n, int) and not isinstance(n, bool) and n >= 0
    for v in s.config.values():
        assert v is None or isinstance(v, (int, float, str, bool))
        f"{v!s:>10}"  # config show prints each value like this


@SETTINGS
@given(payloads)
def test_a_registry_entry_is_a_channel_or_none(payload):
    channel = registry.channel_of(payload)
    assert channel is None or isinstance(channel, str)


@pytest.mark.parametrize("payload", [
    b'{"ts": "0001-01-01T00:00:00+01:00", "temp": 20.5}',   # issue 12, case 1
    b'{"ts": "9999-12-31T23:00:00-05:00", "temp": 20.5}',
    b'{"ts": "2026-11-25T10:00:00Z", "temp": ' + b"9" * 401 + b"}",
    b'{"ts": "2026-11-25T10:00:00Z", "temp": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"ts": "2026-11-25T10:00:00Z", "temp": "' + b"9" * 5000 + b'"}',
])
def test_the_readings_that_stopped_the_listener_are_rejections(payload):
    with pytest.raises(readings.InvalidReading):
        readings.parse(payload)


def test_a_reading_keeps_its_utc_time_with_four_digit_years():
    r = readings.parse(b'{"ts": "0001-01-01T05:00:00+01:00", "temp": "20.4"}')
    assert (r.ts, r.temp) == ("0001-01-01T04:00:00.000Z", 20.4)
    r = readings.parse(b'{"ts": "2026-11-25T10:00:00.123456Z", "temp": 21}')
    assert r.ts == "2026-11-25T10:00:00.123Z"


@pytest.mark.parametrize("doc, reason", [
    ({"version": {"a": 1}}, "version is not a version label (an object)"),  # issue 12, case 3
    ({"config": [1]}, "config is not an object (a list)"),
    ({"ota": "x"}, "ota is not an object (a string)"),
    ({"version": "\x1b[2J"}, "version is not a version label"),
    ({"config": {"sending_frequency": {"deep": 1}}}, "config sending_frequency is not a single"),
    ({"buffered": -1}, "buffered is not a count"),
    ({"ota": {"state": True}}, "ota state is not a state name"),
])
def test_hostile_status_fields_are_clear_rejections(doc, reason):
    st_ = device_status.from_bytes(json.dumps(doc).encode())
    assert st_.rejected.startswith(reason)
    assert st_.version is None and st_.config == {}


def test_a_firmware_status_parses_to_its_values():
    doc = {"ts": "2026-11-25T10:00:00Z", "version": "1.2.0", "slot": "b", "image": None,
           "config": {"sending_frequency": 3}, "cfg_errors": ["colour: unknown\x1b[31m"],
           "buffer_dropped": 2, "buffered": 0, "mem_free": 51234,
           "ota": {"state": "failed", "version": "1.3.0", "reason": "bad\nsignature"}}
    s = device_status.parse(json.dumps(doc).encode())
    assert (s.version, s.slot, s.config, s.buffer_dropped, s.mem_free) == \
        ("1.2.0", "b", {"sending_frequency": 3}, 2, 51234)
    assert s.ota == device_status.OtaReport("failed", "1.3.0", "bad\\nsignature")
    assert s.cfg_errors == ("colour: unknown\\x1b[31m",)


def test_a_rejection_keeps_a_sample_and_a_printable_reason():
    r = rejection("D1", 7, b"x" * 1_000_000, "bad \udc80\x1b[2J")
    assert len(r.sample) == 256 and r.size == 1_000_000
    assert r.reason == "bad \\udc80\\x1b[2J (1000000 bytes, first 256 kept)"
    assert safe_text("é\u202e" * 500) == "é\\u202e" * 100  # bidi override escaped
    assert len(safe_text("a" * 500)) == 200


def test_rejections_are_logged_once_per_device_per_interval(caplog):
    now = [0.0]
    rl = RejectLog(logging.getLogger("test.rejects"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.rejects"):
        for seq in range(1, 101):
            rl.record(rejection("D1", seq, b"x", "not JSON"))
            rl.record(rejection("D2", seq, b"x", "not JSON"))
        now[0] = 61
        rl.record(rejection("D1", 101, b"x", "not JSON"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["device=D1 seq=1 rejected: not JSON", "device=D2 seq=1 rejected: not JSON",
                     "device=D1 seq=101 rejected: not JSON (and 99 more since the last line)"]


@pytest.fixture(params=["sqlite", "postgresql"])
def bounded_store(request, tmp_path):
    """Both readings stores, with small bounds on what they keep of rejections."""
    bounds = dict(rejects_per_device=10, rejects_total=25)
    if request.param == "sqlite":
        return ReadingsDB(str(tmp_path / "r.db"), **bounds)
    from stanfleet.services.readings_pg import PostgresReadings

    return PostgresReadings(request.getfixturevalue("pg_url"), **bounds)


def test_rejects_are_bounded_per_device_and_in_all_and_counted(bounded_store):
    db = bounded_store
    for seq in range(1, 51):
        db.commit_batch([], [("D1", seq, b"y" * 1000, "not JSON")])
    db.commit_batch([], [("D1", 50, b"y", "redelivered")])  # the same message again
    assert [r[1] for r in db.rejects("D1")] == list(range(41, 51))  # the newest kept
    assert all(len(r[2]) == 256 for r in db.rejects("D1"))
    for dev in ("D2", "D3", "D4"):
        db.commit_batch([], [(dev, s, b"z", "x") for s in range(1, 11)])
    assert len(db.rejects()) == 25
    assert db.reject_counts() == {"D1": 50, "D2": 10, "D3": 10, "D4": 10}
    db.close()


def test_a_rejection_delivered_twice_in_one_batch_is_counted_once(bounded_store):
    db = bounded_store
    db.commit_batch([], [("D1", 1, b"x", "not JSON"), ("D1", 1, b"x", "not JSON"),
                         ("D2", 1, b"x", "not JSON")])
    db.commit_batch([], [("D1", 1, b"x", "not JSON")])  # and once more, later
    assert db.reject_counts() == {"D1": 1, "D2": 1}
    assert [(r[0], r[1]) for r in db.rejects()] == [("D1", 1), ("D2", 1)]
    db.close()
