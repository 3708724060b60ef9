"""firmware/lib/pb.py against the protobuf library, byte for byte (CPython),
and the same vectors decoded and re-encoded by the MicroPython unix port."""

from __future__ import annotations

import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpy_runner import LIB, MicroPython, compile_mpy
from stanfleet.pb import protocol_pb2

# Loaded by path, without writing a __pycache__ into firmware/lib.
pb = types.ModuleType("fw_pb")
exec(compile((LIB / "pb.py").read_text(), str(LIB / "pb.py"), "exec"), pb.__dict__)

MESSAGES = ["PubMsg", "PubAck", "MsgProto", "Ack", "ConnectRequest", "ConnectResponse", "Ping",
            "PingResponse", "SubscriptionRequest", "SubscriptionResponse", "UnsubscribeRequest",
            "CloseRequest", "CloseResponse"]

U64_MAX = 2**64 - 1
BIG = bytes(range(256)) * 400  # 100 kB
TEXT = "température ✓ 温度 🌡"


def table(name):
    return getattr(pb, name)


def fields_of(name):
    return pb.fields(table(name))


def as_dict(msg) -> dict:
    """Every field of a protobuf message, defaults included, as pb.decode returns it."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        out[f.name] = getattr(msg, f.name)
    return out


def edge_values(kind: int) -> list:
    return {
        pb.U64: [0, 1, 127, 128, 2**32, U64_MAX],
        pb.U32: [0, 1, 300, 2**32 - 1],
        pb.I32: [0, 1, -1, 2**31 - 1, -(2**31)],
        pb.I64: [0, -1, 2**63 - 1, -(2**63), -1_700_000_000_000_000_000],
        pb.BOOL: [False, True],
        pb.STR: ["", "a", TEXT, "x" * 70_000],
        pb.BYTES: [b"", b"\x00", BIG],
    }[kind]


def edge_cases():
    """Per message: all defaults, then each field at each edge value with the others set."""
    for name in MESSAGES:
        t = fields_of(name)
        yield name, {}
        for num, field, kind in t:
            for v in edge_values(kind):
                fields = {f: edge_values(k)[-1] for _, f, k in t}
                fields[field] = v
                yield name, fields


@pytest.mark.parametrize("name", MESSAGES)
def test_table_matches_proto(name):
    desc = getattr(protocol_pb2, name).DESCRIPTOR
    assert [(num, field) for num, field, _ in fields_of(name)] == sorted(
        (f.number, f.name) for f in desc.fields)


@pytest.mark.parametrize("name,fields", list(edge_cases()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_encode_decode_match_protobuf(name, fields):
    ref = getattr(protocol_pb2, name)(**fields)
    wire = ref.SerializeToString()
    assert bytes(pb.encode(table(name), fields)) == wire
    assert pb.decode(table(name), wire) == as_dict(ref)


def test_negative_ints_are_ten_byte_varints():
    assert bytes(pb.encode(pb.ConnectRequest, {"protocol": -1})) == b"\x18" + b"\xff" * 9 + b"\x01"
    assert pb.decode(pb.ConnectRequest, b"\x18" + b"\xff" * 9 + b"\x01")["protocol"] == -1


def test_unknown_fields_are_skipped():
    # field 99 as varint, fixed64, length-delimited and fixed32 around a known field
    extra = (b"\x98\x06\x05" + b"\x99\x06" + bytes(8) + b"\x9a\x06\x02hi" + b"\x9d\x06" + bytes(4))
    wire = extra + protocol_pb2.PubAck(guid="g", error="e").SerializeToString() + extra
    assert pb.decode(pb.PubAck, wire) == {"guid": "g", "error": "e"}
    # a known field with the wrong wire type is treated as unknown, as protobuf does
    assert pb.decode(pb.Ack, b"\x0a\x01s\x12\x01x") == {"subject": "s", "sequence": 0}


def test_last_value_wins_for_repeated_scalar():
    wire = b"\x08\x01\x08\x02"
    assert pb.decode(pb.MsgProto, wire)["sequence"] == 2
    assert protocol_pb2.MsgProto.FromString(wire).sequence == 2


MALFORMED = [
    b"\x08",                      # varint value missing
    b"\x08\x80",                  # varint cut short
    b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
    b"\x12\x05ab",                # length beyond the end
    b"\x12",                      # length missing
    b"\x22\x80",                  # length varint cut short
    b"\x00\x01",                  # field number 0
    b"\x0b",                      # group start (wire type 3)
    b"\x0e\x00",                  # wire type 6
    b"\x09\x01\x02",              # fixed64 cut short
    b"\x15\x01",                  # fixed32 cut short
    b"\x12\x01\xff",              # invalid UTF-8 in a string field
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_input_raises_value_error(data):
    with pytest.raises(ValueError):
        pb.decode(pb.MsgProto, data)


def test_truncated_prefixes_raise_value_error_or_decode():
    wire = protocol_pb2.MsgProto(sequence=U64_MAX, subject="ch", data=b"x" * 300,
                                 timestamp=-5, CRC32=7).SerializeToString()
    for n in range(len(wire)):
        try:
            pb.decode(pb.MsgProto, wire[:n])  # a prefix that ends on a field boundary is valid
        except ValueError:
            pass


def test_encode_rejects_wrong_types_and_ranges():
    for fields in ({"sequence": U64_MAX + 1}, {"sequence": -1}, {"subject": b"bytes"},
                   {"data": "text"}, {"redelivery_count": 2**32}):
        with pytest.raises(ValueError):
            pb.encode(pb.MsgProto, fields)
    with pytest.raises(ValueError):
        pb.encode(pb.ConnectRequest, {"protocol": 2**31})


# ---- property test ---------------------------------------------------------------------------

KIND_STRATEGY = {
    pb.U64: st.integers(0, U64_MAX),
    pb.U32: st.integers(0, 2**32 - 1),
    pb.I32: st.integers(-(2**31), 2**31 - 1),
    pb.I64: st.integers(-(2**63), 2**63 - 1),
    pb.BOOL: st.booleans(),
    pb.STR: st.text(),
    pb.BYTES: st.binary(),
}


@st.composite
def messages(draw):
    name = draw(st.sampled_from(MESSAGES))
    fields = {f: draw(KIND_STRATEGY[k]) for _, f, k in fields_of(name) if draw(st.booleans())}
    return name, fields


@settings(max_examples=400, deadline=None)
@given(messages())
def test_property_round_trip_matches_protobuf(case):
    name, fields = case
    ref = getattr(protocol_pb2, name)(**fields)
    wire = ref.SerializeToString()
    assert bytes(pb.encode(table(name), fields)) == wire
    assert pb.decode(table(name), wire) == as_dict(ref)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(MESSAGES), st.binary(max_size=64))
def test_property_garbage_only_raises_value_error(name, data):
    try:
        pb.decode(table(name), data)
    except ValueError:
        pass


# ---- the same vectors on the MicroPython unix port, in a small heap --------------------------

def vector_file(path):
    """One JSON line per case: message name, fields (bytes as hex), protobuf wire (hex)."""
    with open(path, "w") as f:
        for name, fields in edge_cases():
            ref = getattr(protocol_pb2, name)(**fields)
            wire = ref.SerializeToString()
            if len(wire) > 4096:
                continue  # the 100 kB cases stay on the CPython side
            enc = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in as_dict(ref).items()}
            f.write(json.dumps([name, enc, wire.hex()], ensure_ascii=False) + "\n")


async def test_codec_on_unix_port_in_32k_heap(tmp_path):
    vectors = tmp_path / "vectors.jsonl"
    vector_file(vectors)
    lib = compile_mpy(tmp_path / "mpy")
    count = sum(1 for _ in open(vectors))
    async with await MicroPython.start("pb_driver.py", vectors, heap="32k", lib=lib) as mp:
        line = await mp.expect("DONE", timeout=60)
        assert line == f"DONE ok={count} bad=0", "\n".join(mp.lines)
        assert await mp.finish() == 0
