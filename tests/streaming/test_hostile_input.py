"""Property-based fuzzing of every subject the streaming server listens on.

Hypothesis generates sequences of hostile messages: random bytes, valid
protobuf with hostile field values, and valid messages bit-flipped, truncated
or padded; up to half a megabyte; with and without reply subjects. Between
attacks a well-behaved client publishes to its own channel and reads it back
through a durable subscription. Invariants: every request that carries a
reply subject gets a reply, the well-behaved client sees all its messages in
order, and the server process neither dies nor logs a failed handler.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.pb import protocol_pb2 as pb

from .rawstan import RawStan

CID = "test-cluster"
GOOD = f"good-{uuid.uuid4().hex}"  # no generated text can hit this clientID
REQUEST_SUBJECTS = [f"_STAN.discover.{CID}", f"_STAN.discover.{CID}.pings",
                    f"_STAN.sub.{CID}", f"_STAN.unsub.{CID}", f"_STAN.subclose.{CID}",
                    f"_STAN.close.{CID}"]
MESSAGE_TYPES = {
    f"_STAN.discover.{CID}": pb.ConnectRequest, f"_STAN.discover.{CID}.pings": pb.Ping,
    f"_STAN.sub.{CID}": pb.SubscriptionRequest, f"_STAN.unsub.{CID}": pb.UnsubscribeRequest,
    f"_STAN.subclose.{CID}": pb.UnsubscribeRequest, f"_STAN.close.{CID}": pb.CloseRequest,
    "pub": pb.PubMsg, "ack": pb.Ack,
}

texts = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", "a.b", "a.*", "a.>", " ", "_INBOX.x", "devices.3F45.events", "dev-1", "x" * 300]))
ints = st.one_of(st.integers(-2**31, 2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1]))
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-2**63, 2**63 - 1)


@st.composite
def valid_message(draw, cls):
    """A message of the right type with hostile field values."""
    msg = cls()
    for field in cls.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        t = field.type
        if field.name == "client_id" and draw(st.booleans()):
            msg.client_id = "hostile"  # a registered client: gets past the first checks
        elif field.name == "conn_id" and draw(st.booleans()):
            pass  # no conn_id: accepted for a registered client
        elif t == field.TYPE_STRING:
            setattr(msg, field.name, draw(texts))
        elif t == field.TYPE_BYTES:
            setattr(msg, field.name, draw(st.binary(max_size=64)))
        elif t in (field.TYPE_INT32, field.TYPE_ENUM):
            setattr(msg, field.name, draw(ints) if t == field.TYPE_INT32
                    else draw(st.integers(0, 4)))
        elif t == field.TYPE_UINT64:
            setattr(msg, field.name, draw(u64))
        elif t == field.TYPE_INT64:
            setattr(msg, field.name, draw(i64))
        elif t == field.TYPE_UINT32:
            setattr(msg, field.name, draw(st.integers(0, 2**32 - 1)))
        elif t == field.TYPE_BOOL:
            setattr(msg, field.name, draw(st.booleans()))
    return msg.SerializeToString()


@st.composite
def payload(draw, cls):
    kind = draw(st.sampled_from(["random", "valid", "mutated", "truncated", "padded", "big"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "big":
        return os.urandom(draw(st.integers(64 * 1024, 512 * 1024)))
    data = draw(valid_message(cls))
    if kind == "mutated" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    elif kind == "truncated" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "padded":
        data += draw(st.binary(min_size=1, max_size=40))
    return data


@st.composite
def attack(draw):
    target = draw(st.sampled_from(REQUEST_SUBJECTS + ["pub", "ack", "fake-ack"]))
    cls = MESSAGE_TYPES.get(target, pb.Ack)
    if target == "pub":
        subject = f"_STAN.pub.{CID}." + draw(st.sampled_from(
            ["x", "devices.3F45.events", "a.b.c", "good.channel"]))
        cls = pb.PubMsg
    elif target == "ack":
        subject = "REAL_ACK_INBOX"  # replaced by a live subscription's ack inbox
    elif target == "fake-ack":
        subject = f"_STAN.acks.{CID}." + draw(st.text("abcXYZ0123", min_size=1, max_size=22))
    else:
        subject = target
    return subject, draw(payload(cls)), draw(st.booleans())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Broker(BrokerConfig(store_dir=str(tmp / "js"))).start()
    exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([exe, "streaming-server", "-ns", broker.url, "-dir", str(tmp),
                             "-mc", "1000"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(log_path, proc)
        yield broker.url, proc, log_path
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        broker.stop()


def _wait_ready(path, proc, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(path.read_text())
        if "streaming server ready" in path.read_text():
            return
        time.sleep(0.05)  # a process we only see through its log file
    raise AssertionError("server did not start")


async def _run(url: str, attacks, round_no: int) -> int:
    good = await RawStan.open(url, CID, f"{GOOD}-{round_no}")
    assert (await good.connect()).error == ""
    channel = "good.channel"
    sub = await good.subscribe(channel, f"_INBOX.good.{round_no}", durable_name="d",
                               start_position=pb.NewOnly)
    assert sub.error == ""
    registered = await RawStan.open(url, CID, "hostile")
    await registered.connect()  # may be refused if a previous round's is alive: fine
    hostile = await nats.connect(url, max_reconnect_attempts=-1)
    sent = 0
    expected = []
    try:
        for i, (subject, data, with_reply) in enumerate(attacks):
            if subject == "REAL_ACK_INBOX":
                subject = sub.ack_inbox
            if with_reply and not subject.startswith("_STAN.acks."):
                # Every request gets an answer, an error being a fine one.
                await hostile.request(subject, data, timeout=10)
            else:
                await hostile.publish(subject, data)
            sent += 1
            if i % 5 == 0:  # the well-behaved client carries on in between
                body = f"{round_no}:{i}".encode()
                assert (await good.publish(channel, body)).error == ""
                expected.append(body)
        got = []
        while len(got) < len(expected):
            m = await sub.next(timeout=10)
            if m.redelivered and m.data in got:
                continue  # allowed: at-least-once, flagged as such
            got.append(m.data)
            await sub.ack(m)
        assert got == expected  # all of them, in order, once
    finally:
        await hostile.close()
        await registered.nc.close()
        await good.close()
    return sent


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(attacks=st.lists(attack(), min_size=20, max_size=60))
def test_hostile_input_never_breaks_the_server(server, attacks):
    url, proc, log_path = server
    test_hostile_input_never_breaks_the_server.rounds += 1
    sent = asyncio.run(_run(url, attacks, test_hostile_input_never_breaks_the_server.rounds))
    test_hostile_input_never_breaks_the_server.sent += sent
    assert proc.poll() is None, "the server process died"
    log = log_path.read_text()
    # A handler that raised is a bug even if the server survived it.
    assert "Traceback" not in log and "handler for" not in log, log[-5000:]


test_hostile_input_never_breaks_the_server.rounds = 0
test_hostile_input_never_breaks_the_server.sent = 0


def test_fuzz_report(server):
    """Runs after the property (same module): says how much hostile input went in."""
    print(f"hostile messages sent: {test_hostile_input_never_breaks_the_server.sent} in "
          f"{test_hostile_input_never_breaks_the_server.rounds} rounds")
