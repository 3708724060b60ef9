# Tiny proto3 codec for the STAN client messages (server/stanfleet/pb/protocol.proto).
# Runs unchanged on MicroPython and CPython.
#
# A message type is a flat tuple: name, spec, name, spec, ... in field-number
# order, where spec = field number << 3 | kind. Field-number order is also the
# order protobuf serialises in, so encode() is byte-identical to
# SerializeToString(). Flat tuples of constants cost a third of the RAM of a
# tuple per field. decode() returns a dict holding every field, with the proto3
# default where the field was absent.
#
#   data = pb.encode(pb.PubAck, {"guid": "g1"})   # a bytearray
#   msg = pb.decode(pb.PubAck, data)        # {"guid": "g1", "error": ""}
#
# Malformed or truncated input raises ValueError, never anything else.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Field kinds. Varint kinds differ only in how a decoded value is read back.
U64 = const(0)  # uint64
U32 = const(1)  # uint32
I32 = const(2)  # int32 and enums: negatives go out as 10-byte varints
I64 = const(3)  # int64
BOOL = const(4)
STR = const(5)
BYTES = const(6)

_M64 = const(0xFFFFFFFFFFFFFFFF)

# ---- message tables ---------------------------------------------------------

PubMsg = (
    "client_id", 1 << 3 | STR,
    "guid", 2 << 3 | STR,
    "subject", 3 << 3 | STR,
    "reply", 4 << 3 | STR,
    "data", 5 << 3 | BYTES,
    "conn_id", 6 << 3 | BYTES,
    "sha256", 10 << 3 | BYTES,
)
PubAck = ("guid", 1 << 3 | STR, "error", 2 << 3 | STR)
MsgProto = (
    "sequence", 1 << 3 | U64,
    "subject", 2 << 3 | STR,
    "reply", 3 << 3 | STR,
    "data", 4 << 3 | BYTES,
    "timestamp", 5 << 3 | I64,
    "redelivered", 6 << 3 | BOOL,
    "redelivery_count", 7 << 3 | U32,
    "CRC32", 10 << 3 | U32,
)
Ack = ("subject", 1 << 3 | STR, "sequence", 2 << 3 | U64)
ConnectRequest = (
    "client_id", 1 << 3 | STR,
    "heartbeat_inbox", 2 << 3 | STR,
    "protocol", 3 << 3 | I32,
    "conn_id", 4 << 3 | BYTES,
    "ping_interval", 5 << 3 | I32,
    "ping_max_out", 6 << 3 | I32,
)
ConnectResponse = (
    "pub_prefix", 1 << 3 | STR,
    "sub_requests", 2 << 3 | STR,
    "unsub_requests", 3 << 3 | STR,
    "close_requests", 4 << 3 | STR,
    "error", 5 << 3 | STR,
    "sub_close_requests", 6 << 3 | STR,
    "ping_requests", 7 << 3 | STR,
    "ping_interval", 8 << 3 | I32,
    "ping_max_out", 9 << 3 | I32,
    "protocol", 10 << 3 | I32,
    "public_key", 100 << 3 | STR,
)
Ping = ("conn_id", 1 << 3 | BYTES)
PingResponse = ("error", 1 << 3 | STR)
SubscriptionRequest = (
    "client_id", 1 << 3 | STR,
    "subject", 2 << 3 | STR,
    "q_group", 3 << 3 | STR,
    "inbox", 4 << 3 | STR,
    "max_in_flight", 5 << 3 | I32,
    "ack_wait_in_secs", 6 << 3 | I32,
    "durable_name", 7 << 3 | STR,
    "start_position", 10 << 3 | I32,
    "start_sequence", 11 << 3 | U64,
    "start_time_delta", 12 << 3 | I64,
)
SubscriptionResponse = ("ack_inbox", 2 << 3 | STR, "error", 3 << 3 | STR)
UnsubscribeRequest = (
    "client_id", 1 << 3 | STR,
    "subject", 2 << 3 | STR,
    "inbox", 3 << 3 | STR,
    "durable_name", 4 << 3 | STR,
)
CloseRequest = ("client_id", 1 << 3 | STR)
CloseResponse = ("error", 1 << 3 | STR)

# StartPosition enum
NEW_ONLY = const(0)
LAST_RECEIVED = const(1)
TIME_DELTA_START = const(2)
SEQUENCE_START = const(3)
FIRST = const(4)

# ---- encoding ---------------------------------------------------------------


def _vlen(v):
    n = 1
    while v > 0x7F:
        v >>= 7
        n += 1
    return n


def _put(buf, i, v):
    while v > 0x7F:
        buf[i] = (v & 0x7F) | 0x80
        v >>= 7
        i += 1
    buf[i] = v
    return i + 1


def _wire(kind, value):
    # Returns the value to put on the wire: an int for varints, a bytes-like
    # for length-delimited kinds, or None when proto3 omits it (default value).
    if kind >= STR:
        if not value:
            return None
        if kind == STR:
            if not isinstance(value, str):
                raise ValueError("str field")
            return value.encode()
        if isinstance(value, str):
            raise ValueError("bytes field")
        return value
    if not value:
        return None
    if kind == BOOL:
        return 1
    v = int(value)
    if kind == U64:
        lo, hi = 0, _M64
    elif kind == U32:
        lo, hi = 0, 0xFFFFFFFF
    elif kind == I32:
        lo, hi = -0x80000000, 0x7FFFFFFF
    else:
        lo, hi = -0x8000000000000000, 0x7FFFFFFFFFFFFFFF
    if v < lo or v > hi:
        raise ValueError("out of range")
    # protobuf sign-extends negative int32 to 64 bits: always 10 bytes
    return v & _M64


def fields(msg):
    """(number, name, kind) of each field of message type ``msg``."""
    return [(msg[j + 1] >> 3, msg[j], msg[j + 1] & 7) for j in range(0, len(msg), 2)]


def encode(msg, values):
    """Serialise the dict ``values`` as message type ``msg``. Returns a bytearray."""
    # Two passes: size first, then fill one buffer, so there is one allocation
    # besides the utf-8 copies of strings.
    n = len(msg) // 2
    wire = [None] * n
    size = 0
    for j in range(n):
        spec = msg[2 * j + 1]
        kind = spec & 7
        w = _wire(kind, values.get(msg[2 * j]))
        if w is None:
            continue
        wire[j] = w
        size += _vlen(spec & ~7)
        if kind >= STR:
            size += _vlen(len(w)) + len(w)
        else:
            size += _vlen(w)
    buf = bytearray(size)
    i = 0
    for j in range(n):
        w = wire[j]
        if w is None:
            continue
        spec = msg[2 * j + 1]
        if spec & 7 >= STR:
            i = _put(buf, i, (spec & ~7) | 2)
            k = len(w)
            i = _put(buf, i, k)
            buf[i : i + k] = w
            i += k
        else:
            i = _put(buf, i, spec & ~7)
            i = _put(buf, i, w)
    return buf


# ---- decoding ---------------------------------------------------------------


def _get(buf, i, end):
    # Varint at buf[i]: returns (value, next index). At most 10 bytes.
    v = 0
    s = 0
    while True:
        if i >= end:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << s
        if not b & 0x80:
            return v & _M64, i
        s += 7
        if s >= 70:
            raise ValueError("varint too long")


def _default(kind):
    if kind == STR:
        return ""
    if kind == BYTES:
        return b""
    if kind == BOOL:
        return False
    return 0


def _value(kind, v):
    if kind == U64:
        return v
    if kind == BOOL:
        return v != 0
    if kind == U32:
        return v & 0xFFFFFFFF
    if kind == I32:
        v &= 0xFFFFFFFF
        return v - 0x100000000 if v & 0x80000000 else v
    return v - 0x10000000000000000 if v & 0x8000000000000000 else v


def decode(msg, data):
    """Parse ``data`` (bytes-like) as message type ``msg``; returns a dict."""
    out = {}
    n = len(msg)
    for j in range(0, n, 2):
        out[msg[j]] = _default(msg[j + 1] & 7)
    mv = memoryview(data)
    end = len(mv)
    i = 0
    while i < end:
        key, i = _get(mv, i, end)
        num = key >> 3
        wt = key & 7
        if num == 0:
            raise ValueError("field 0")
        # kind of the field, or -1 when unknown
        kind = -1
        for j in range(1, n, 2):
            if msg[j] >> 3 == num:
                kind = msg[j] & 7
                name = msg[j - 1]
                break
        if wt == 0:
            v, i = _get(mv, i, end)
            # a known field sent with another wire type is kept as unknown, as protobuf does
            if 0 <= kind < STR:
                out[name] = _value(kind, v)
        elif wt == 2:
            k, i = _get(mv, i, end)
            if k > end - i:
                raise ValueError("truncated field")
            if kind == STR:
                try:
                    out[name] = str(mv[i : i + k], "utf-8")
                except UnicodeError:
                    raise ValueError("bad utf-8")
            elif kind == BYTES:
                out[name] = bytes(mv[i : i + k])
            i += k
        elif wt == 1 or wt == 5:
            i += 8 if wt == 1 else 4
            if i > end:
                raise ValueError("truncated fixed")
        else:
            raise ValueError("bad wire type")
    return out
