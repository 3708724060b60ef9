"""Unit tests of the STAN client that need no server: option mapping,
message view, error hierarchy, pub-ack book-keeping, ping accounting and
dropping of malformed frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import pytest
from stanfleet.client import (
    Client,
    ErrBadConnection,
    ErrConnectionClosed,
    ErrConnectionLost,
    ErrConnectReqTimeout,
    ErrInvalidOption,
    ErrMaxPings,
    ErrTimeout,
    ErrTimeoutError,
    Msg,
    StanError,
)
from stanfleet.client.options import (
    build_subscription_request,
    ping_interval_from_wire,
    ping_interval_wire,
    start_position,
    validate_channel,
    validate_connect,
)
from stanfleet.client.pings import Pinger
from stanfleet.client.pubacks import PubAckTracker
from stanfleet.client.wire import decode, is_no_responders
from stanfleet.pb import protocol_pb2 as pb

# --- start positions -----------------------------------------------------------


@pytest.mark.parametrize(
    "start_at, expected",
    [
        (None, pb.NewOnly),
        ("new_only", pb.NewOnly),
        ("last_received", pb.LastReceived),
        ("first", pb.First),
    ],
)
def test_start_at_maps_to_start_position(start_at, expected):
    assert start_position(start_at) == (expected, 0, 0)


def test_deliver_all_available_wins_over_start_at():
    assert start_position("last_received", deliver_all_available=True) == (pb.First, 0, 0)


def test_sequence_start_carries_the_sequence():
    assert start_position("sequence", sequence=12) == (pb.SequenceStart, 12, 0)


def test_sequence_without_start_at_selects_sequence_start():
    assert start_position(None, sequence=3) == (pb.SequenceStart, 3, 0)


@pytest.mark.parametrize("bad", [None, -1, "3", 1.5, True])
def test_sequence_start_needs_a_valid_sequence(bad):
    with pytest.raises(ErrInvalidOption):
        start_position("sequence", sequence=bad)


def test_time_start_is_sent_as_delta_in_nanoseconds():
    pos, seq, delta = start_position("time", time=1000.0, now=1120.5)
    assert (pos, seq, delta) == (pb.TimeDeltaStart, 0, 120_500_000_000)


def test_time_start_accepts_datetime():
    when = dt.datetime.fromtimestamp(1000.0, tz=dt.timezone.utc)
    assert start_position("time", time=when, now=1002.0) == (pb.TimeDeltaStart, 0, 2_000_000_000)


def test_time_without_start_at_selects_time_start():
    assert start_position(None, time=10.0, now=11.0) == (pb.TimeDeltaStart, 0, 1_000_000_000)


def test_time_start_in_the_future_means_from_now():
    assert start_position("time", time=2000.0, now=1000.0) == (pb.TimeDeltaStart, 0, 0)


@pytest.mark.parametrize("bad", [None, "yesterday", True])
def test_time_start_needs_a_time(bad):
    with pytest.raises(ErrInvalidOption):
        start_position("time", time=bad)


@pytest.mark.parametrize("bad", ["latest", "", 3, "FIRST"])
def test_unknown_start_at_is_rejected(bad):
    with pytest.raises(ErrInvalidOption):
        start_position(bad)


def test_invalid_option_is_a_stan_error_and_a_value_error():
    with pytest.raises(StanError):
        start_position("nope")
    with pytest.raises(ValueError):
        start_position("nope")


# --- subscription request ---------------------------------------------------------


def test_subscription_request_carries_every_option():
    req = build_subscription_request(
        "c1",
        "devices.3F45.events",
        "_INBOX.x",
        queue="workers",
        durable_name="dur",
        start_at="sequence",
        sequence=7,
        ack_wait=5,
        max_inflight=10,
    )
    assert req.client_id == "c1"
    assert req.subject == "devices.3F45.events"
    assert req.inbox == "_INBOX.x"
    assert req.q_group == "workers"
    assert req.durable_name == "dur"
    assert req.start_position == pb.SequenceStart
    assert req.start_sequence == 7
    assert req.ack_wait_in_secs == 5
    assert req.max_in_flight == 10


def test_subscription_request_defaults_match_stan_py():
    req = build_subscription_request("c1", "foo", "_INBOX.x")
    assert req.q_group == "" and req.durable_name == ""
    assert req.start_position == pb.NewOnly
    assert req.ack_wait_in_secs == 30
    assert req.max_in_flight == 1024


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ack_wait": 0},
        {"ack_wait": 0.5},
        {"ack_wait": "30"},
        {"max_inflight": 0},
        {"max_inflight": 2.0},
        {"queue": 5},
    ],
)
def test_subscription_request_rejects_bad_options(kwargs):
    with pytest.raises(ErrInvalidOption):
        build_subscription_request("c1", "foo", "_INBOX.x", **kwargs)


@pytest.mark.parametrize("subject", ["", "foo.*", "foo.>", ">", "a..b", ".a", "a.", "a b"])
def test_channel_names_are_literal_subjects(subject):
    with pytest.raises(ErrInvalidOption):
        validate_channel(subject)


def test_valid_channel_names_pass():
    validate_channel("devices.3F45.events")
    validate_channel("foo")


# --- connect options ----------------------------------------------------------------


def test_connect_options_are_validated():
    validate_connect("test-cluster", "client-1_A", 2, 16384, 5, 3)
    for args in [
        ("", "c", 2, 1, 5, 3),
        ("cl", "", 2, 1, 5, 3),
        ("cl", "bad.id", 2, 1, 5, 3),
        ("cl", "c", 0, 1, 5, 3),
        ("cl", "c", 2, 0, 5, 3),
        ("cl", "c", 2, 1, 0, 3),
        ("cl", "c", 2, 1, 5, 0),
    ]:
        with pytest.raises(ErrInvalidOption):
            validate_connect(*args)


def test_ping_interval_wire_format():
    assert ping_interval_wire(5) == 5
    assert ping_interval_wire(2.7) == 2
    assert ping_interval_wire(0.25) == -250
    assert ping_interval_from_wire(5) == 5.0
    assert ping_interval_from_wire(-250) == 0.25


async def test_connect_rejects_bad_options_before_any_network():
    sc = Client()
    with pytest.raises(ErrInvalidOption):
        await sc.connect("test-cluster", "has space", servers=["nats://127.0.0.1:1"])
    with pytest.raises(ErrInvalidOption):
        await sc.connect("test-cluster", "c1", nats=object(), servers=["nats://127.0.0.1:1"])


async def test_unconnected_client_refuses_work():
    sc = Client()
    with pytest.raises(ErrBadConnection):
        await sc.publish("foo", b"x")
    with pytest.raises(ErrBadConnection):
        await sc.subscribe("foo", cb=lambda m: None)
    with pytest.raises(ErrBadConnection):
        await sc.close()


async def test_connect_to_unreachable_nats_is_a_bad_connection():
    sc = Client()
    with pytest.raises(ErrBadConnection):
        await sc.connect(
            "test-cluster",
            "c1",
            servers=["nats://127.0.0.1:1"],
            nats_kwargs={"max_reconnect_attempts": 1, "reconnect_time_wait": 0.01},
        )


# --- messages ------------------------------------------------------------------------


def test_msg_exposes_stan_py_properties():
    proto = pb.MsgProto(
        sequence=42,
        subject="devices.3F45.events",
        data=b"21.5",
        timestamp=1_700_000_000_123_456_789,
        redelivered=True,
        redelivery_count=2,
    )
    sub = object()
    m = Msg(proto, sub)
    assert m.seq == m.sequence == 42
    assert m.data == b"21.5"
    assert m.timestamp == 1_700_000_000_123_456_789
    assert m.subject == "devices.3F45.events"
    assert m.redelivered is True
    assert m.redelivery_count == 2
    assert m.sub is sub and m.proto is proto
    assert "seq=42" in repr(m)


# --- errors --------------------------------------------------------------------------


def test_timeouts_are_stan_errors_and_asyncio_timeouts():
    for cls in (ErrTimeout, ErrConnectReqTimeout, ErrTimeoutError):
        assert issubclass(cls, StanError)
        assert issubclass(cls, asyncio.TimeoutError)


def test_errors_standing_in_for_a_pub_ack_carry_guid_and_error():
    e = ErrTimeout(guid="g1")
    assert e.guid == "g1" and e.error == "stan: publish ack timeout"
    c = ErrConnectionClosed(guid="g2")
    assert c.guid == "g2" and c.error == "stan: connection closed"


def test_ping_failure_messages_match_stan_py():
    assert str(ErrMaxPings()) == "stan: connection lost due to PING failure"
    assert isinstance(ErrMaxPings(), ErrConnectionLost)


# --- malformed frames --------------------------------------------------------------------


def test_malformed_frames_are_logged_and_dropped(caplog):
    with caplog.at_level(logging.WARNING, logger="stanfleet.client"):
        assert decode(pb.MsgProto, b"\xff\xff\xff", "test") is None
        assert decode(pb.PubAck, b"\x0a\x05ab", "test") is None
    assert "malformed MsgProto" in caplog.text
    assert "malformed PubAck" in caplog.text
    ok = decode(pb.PubAck, pb.PubAck(guid="g").SerializeToString(), "test")
    assert ok is not None and ok.guid == "g"


class FakeNatsMsg:
    def __init__(self, data=b"", headers=None, subject="", reply=""):
        self.data = data
        self.headers = headers
        self.subject = subject
        self.reply = reply


def test_no_responders_status_is_recognised():
    assert is_no_responders(FakeNatsMsg(headers={"Status": "503"}))
    assert not is_no_responders(FakeNatsMsg(data=b"x", headers={"Status": "503"}))
    assert not is_no_responders(FakeNatsMsg(headers=None))


# --- pub ack tracker --------------------------------------------------------------------


async def test_tracker_resolves_future_and_frees_slot():
    t = PubAckTracker(max_inflight=1)
    await t.reserve()
    fut = t.add("g1", 30, None)
    assert t.full and "g1" in t
    ack = pb.PubAck(guid="g1")
    assert await t.resolve("g1", ack)
    assert fut.result() is ack
    assert not t.full and len(t) == 0
    assert not await t.resolve("g1", ack)  # a duplicate ack is ignored


async def test_tracker_blocks_at_max_inflight_until_an_ack():
    t = PubAckTracker(max_inflight=2)
    for guid in ("a", "b"):
        await t.reserve()
        t.add(guid, 30, lambda ack: None)
    third = asyncio.ensure_future(t.reserve())
    await asyncio.sleep(0)
    assert not third.done()
    await t.resolve("a", pb.PubAck(guid="a"))
    await asyncio.wait_for(third, 1)


async def test_tracker_calls_sync_and_async_handlers():
    t = PubAckTracker(max_inflight=10)
    got = []

    async def async_handler(ack):
        got.append(("async", ack.guid))

    await t.reserve()
    t.add("a", 30, async_handler)
    await t.reserve()
    t.add("b", 30, lambda ack: got.append(("sync", ack.guid)))
    await t.resolve("a", pb.PubAck(guid="a"))
    await t.resolve("b", pb.PubAck(guid="b"))
    assert got == [("async", "a"), ("sync", "b")]


async def test_tracker_times_out_each_ack_wait_group_in_order():
    t = PubAckTracker(max_inflight=10)
    expired = asyncio.Queue()
    await t.reserve()
    slow = t.add("slow", 30, None)
    await t.reserve()
    t.add("fast", 0.01, lambda err: expired.put_nowait(err))
    err = await asyncio.wait_for(expired.get(), 5)
    assert isinstance(err, ErrTimeout) and err.guid == "fast"
    assert "slow" in t and not slow.done() and len(t) == 1
    t.fail_all(lambda guid: ErrConnectionClosed(guid=guid))
    with pytest.raises(ErrConnectionClosed):
        await slow


async def test_tracker_sync_publish_timeout_raises_err_timeout():
    t = PubAckTracker(max_inflight=10)
    await t.reserve()
    fut = t.add("g", 0.01, None)
    with pytest.raises(ErrTimeout):
        await asyncio.wait_for(fut, 5)
    assert len(t) == 0 and not t.full


async def test_tracker_handler_errors_are_logged_not_raised(caplog):
    t = PubAckTracker(max_inflight=10)

    def bad(ack):
        raise RuntimeError("boom")

    await t.reserve()
    t.add("g", 30, bad)
    with caplog.at_level(logging.ERROR, logger="stanfleet.client"):
        assert await t.resolve("g", pb.PubAck(guid="g"))
    assert "ack_handler raised" in caplog.text


# --- ping accounting ------------------------------------------------------------------------


class RecordingNats:
    def __init__(self):
        self.sent = asyncio.Queue()

    async def publish(self, subject, payload, reply=""):
        self.sent.put_nowait((subject, payload, reply))


async def test_pinger_declares_loss_after_max_out_unanswered_pings():
    nc = RecordingNats()
    lost = asyncio.get_running_loop().create_future()
    p = Pinger(nc, "c1", "pings", "inbox", b"cid", 0.01, 3, lost.set_result)
    p.start()
    err = await asyncio.wait_for(lost, 5)
    p.stop()
    assert isinstance(err, ErrMaxPings)
    assert nc.sent.qsize() == 3
    subject, payload, reply = nc.sent.get_nowait()
    assert (subject, reply) == ("pings", "inbox")
    assert pb.Ping.FromString(payload).conn_id == b"cid"


async def test_pinger_answer_resets_the_count_and_error_loses_session():
    lost = []
    p = Pinger(RecordingNats(), "c1", "pings", "inbox", b"cid", 60, 3, lost.append)
    p.outstanding = 3
    p.on_response(FakeNatsMsg(pb.PingResponse().SerializeToString()))
    assert p.outstanding == 0 and lost == []
    p.outstanding = 2
    p.on_response(FakeNatsMsg(headers={"Status": "503"}))  # no responders: not an answer
    p.on_response(FakeNatsMsg(b"\xff\xff"))  # malformed: dropped
    assert p.outstanding == 2 and lost == []
    p.on_response(
        FakeNatsMsg(pb.PingResponse(error="client has been replaced").SerializeToString())
    )
    assert len(lost) == 1 and str(lost[0]) == "client has been replaced"
    assert isinstance(lost[0], ErrConnectionLost)
