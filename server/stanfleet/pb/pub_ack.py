"""PubAck encoded by hand: the hot path sends one per message.

Building a protobuf PubAck, sizing and serialising it was an eighth of the
streaming server's CPU in async publish. Its encoding is two length-delimited
strings (guid = 1, error = 2; empty ones omitted, as proto3 does), so the
bytes are written directly; tests/streaming/test_pub_ack.py checks them
against the protobuf library's.
"""

from __future__ import annotations

_GUID = b"\x0a"  # field 1, wire type 2
_ERROR = b"\x12"  # field 2, wire type 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    return tag + (bytes((n,)) if n < 0x80 else _varint(n)) + value


def encode(guid: str, error: str = "") -> bytes:
    """The bytes of PubAck(guid=guid, error=error).SerializeToString()."""
    out = _field(_GUID, guid.encode()) if guid else b""
    if error:
        out += _field(_ERROR, error.encode())
    return out
