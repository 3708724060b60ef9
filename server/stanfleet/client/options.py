"""Validation of client options and mapping of subscribe options to a
SubscriptionRequest. Pure functions, so they are unit-tested without a server.
"""

from __future__ import annotations

import datetime as _dt
import time as _time

from stanfleet.pb import protocol_pb2 as pb

from .errors import ErrInvalidOption

# Defaults are stan.py 0.4.0's, so ported code behaves the same.
DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds, for every request to the server
DEFAULT_MAX_PUB_ACKS_INFLIGHT = 16384
DEFAULT_PING_INTERVAL = 5.0  # seconds
DEFAULT_PING_MAX_OUT = 3
DEFAULT_ACK_WAIT = 30  # seconds; pub acks and subscription redelivery
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_PENDING_LIMIT = 8192  # delivered messages buffered per subscription

# STAN protocol: the server redelivers after ack_wait_in_secs, minimum 1 s.
MIN_ACK_WAIT = 1

START_POSITIONS: dict[str, int] = {
    "new_only": pb.NewOnly,
    "last_received": pb.LastReceived,
    "time": pb.TimeDeltaStart,
    "sequence": pb.SequenceStart,
    "first": pb.First,
}

StartTime = int | float | _dt.datetime


def _positive(name: str, value, minimum: float = 0, integer: bool = False) -> None:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or value <= minimum:
        kind = "an integer" if integer else "a number"
        raise ErrInvalidOption(f"stan: {name} must be {kind} > {minimum}, got {value!r}")


def validate_connect(
    cluster_id: str,
    client_id: str,
    connect_timeout: float,
    max_pub_acks_inflight: int,
    ping_interval: float,
    ping_max_out: int,
) -> None:
    for name, value in (("cluster_id", cluster_id), ("client_id", client_id)):
        if not isinstance(value, str) or not value:
            raise ErrInvalidOption(f"stan: {name} must be a non-empty string")
    # The Go server accepts only [A-Za-z0-9_-] in client IDs; fail here with a
    # clear message instead of a server-side rejection.
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in client_id):
        raise ErrInvalidOption(f"stan: invalid client_id {client_id!r}: use [A-Za-z0-9_-]")
    _positive("connect_timeout", connect_timeout)
    _positive("max_pub_acks_inflight", max_pub_acks_inflight, integer=True)
    _positive("ping_interval", ping_interval)
    _positive("ping_max_out", ping_max_out, integer=True)


def validate_channel(subject: str) -> None:
    """STAN channels are literal subjects: no wildcards, no empty tokens."""
    if not isinstance(subject, str) or not subject:
        raise ErrInvalidOption("stan: subject must be a non-empty string")
    if "*" in subject or ">" in subject or " " in subject:
        raise ErrInvalidOption(f"stan: invalid subject {subject!r}: wildcards are not allowed")
    if subject.startswith(".") or subject.endswith(".") or ".." in subject:
        raise ErrInvalidOption(f"stan: invalid subject {subject!r}")


def ping_interval_wire(seconds: float) -> int:
    """Ping interval as sent in ConnectRequest: whole seconds, or negative
    milliseconds below one second (the Go client's convention for tests)."""
    if seconds >= 1:
        return int(seconds)
    return -max(1, int(seconds * 1000))


def ping_interval_from_wire(value: int) -> float:
    """Inverse of :func:`ping_interval_wire` for the server's ConnectResponse."""
    return -value / 1000.0 if value < 0 else float(value)


def _unix_seconds(value: StartTime) -> float:
    if isinstance(value, _dt.datetime):
        return value.timestamp()  # a naive datetime is taken as local time
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ErrInvalidOption(f"stan: time must be unix seconds or a datetime, got {value!r}")
    return float(value)


def start_position(
    start_at: str | None,
    deliver_all_available: bool = False,
    sequence: int | None = None,
    time: StartTime | None = None,
    now: float | None = None,
) -> tuple[int, int, int]:
    """Map stan.py's start options to (StartPosition, start_sequence, start_time_delta ns).

    As in stan.py, ``deliver_all_available`` wins over ``start_at``. Unlike
    stan.py, a ``sequence`` or ``time`` given without ``start_at`` selects that
    start instead of being silently ignored.
    """
    if deliver_all_available:
        return pb.First, 0, 0
    if start_at is None:
        if sequence is not None:
            start_at = "sequence"
        elif time is not None:
            start_at = "time"
        else:
            start_at = "new_only"
    position = START_POSITIONS.get(start_at) if isinstance(start_at, str) else None
    if position is None:
        choices = ", ".join(START_POSITIONS)
        raise ErrInvalidOption(f"stan: start_at must be one of {choices}, got {start_at!r}")

    if position == pb.SequenceStart:
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise ErrInvalidOption(
                f"stan: start_at='sequence' needs sequence >= 0, got {sequence!r}"
            )
        return position, sequence, 0

    if position == pb.TimeDeltaStart:
        if time is None:
            raise ErrInvalidOption("stan: start_at='time' needs time (unix seconds)")
        current = _time.time() if now is None else now
        # The protocol carries "how long ago", not an absolute time. A start in
        # the future means "only new messages", which a zero delta also gives.
        delta_ns = round((current - _unix_seconds(time)) * 1e9)
        return position, 0, max(0, delta_ns)

    return position, 0, 0


def build_subscription_request(
    client_id: str,
    subject: str,
    inbox: str,
    queue: str | None = None,
    durable_name: str | None = None,
    start_at: str | None = None,
    deliver_all_available: bool = False,
    sequence: int | None = None,
    time: StartTime | None = None,
    ack_wait: int = DEFAULT_ACK_WAIT,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    now: float | None = None,
) -> pb.SubscriptionRequest:
    validate_channel(subject)
    if isinstance(ack_wait, bool) or not isinstance(ack_wait, (int, float)):
        raise ErrInvalidOption(f"stan: ack_wait must be seconds, got {ack_wait!r}")
    if int(ack_wait) < MIN_ACK_WAIT:
        raise ErrInvalidOption(f"stan: ack_wait must be >= {MIN_ACK_WAIT} s, got {ack_wait!r}")
    _positive("max_inflight", max_inflight, integer=True)
    for name, value in (("queue", queue), ("durable_name", durable_name)):
        if value is not None and not isinstance(value, str):
            raise ErrInvalidOption(f"stan: {name} must be a string, got {value!r}")

    position, start_seq, delta = start_position(
        start_at, deliver_all_available, sequence, time, now
    )
    return pb.SubscriptionRequest(
        client_id=client_id,
        subject=subject,
        q_group=queue or "",
        inbox=inbox,
        max_in_flight=max_inflight,
        ack_wait_in_secs=int(ack_wait),
        durable_name=durable_name or "",
        start_position=position,
        start_sequence=start_seq,
        start_time_delta=delta,
    )
