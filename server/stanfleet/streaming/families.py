"""Channel families: many channels sharing one JetStream stream.

A stream per channel stops a fleet short of 10,000 devices (30,000 channels):
JetStream creates streams at 10-30/s past ~5,000 and each costs ~66 KB. A
family is a channel pattern (`devices.*.events`); every channel matching it
is one subject of the family's stream. STAN semantics stay per channel:

- the server numbers a channel's messages itself (1, 2, ...) and stores the
  number in the `Stan-Seq` header; each store carries
  `Nats-Expected-Last-Subject-Sequence`, so two writers (an FT standby that
  still thinks it is active) can never store the same channel sequence;
- after a restart a channel's counter is read lazily from its last message;
- a subscription is a consumer filtered on the channel's subject, and a
  start sequence is found by a binary search over that subject's messages.

This module holds the parts that know these rules; channels.py and
subscriptions.py call them for a channel whose `family` is set.
"""

from __future__ import annotations

from .limits import pattern_matches
from .naming import check_channel

SEQ_HEADER = "Stan-Seq"
EXPECT_HEADER = "Nats-Expected-Last-Subject-Sequence"
# JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence.
ERR_WRONG_LAST_SEQUENCE = 10071


class FamilyError(ValueError):
    """A --channel_families pattern is not a valid channel pattern."""


def parse_patterns(patterns: list[str]) -> list[str]:
    """Check the patterns: channel names whose tokens may be '*' (a trailing
    '>' too); a literal pattern would be a family of one, so is refused."""
    out = []
    for p in patterns:
        try:
            check_channel(p.replace("*", "x").replace(">", "x"))
        except ValueError:
            raise FamilyError(f"invalid channel family {p!r}") from None
        tokens = p.split(".")
        if any(t not in ("*", ">") and ("*" in t or ">" in t) for t in tokens) \
                or ">" in tokens[:-1]:
            raise FamilyError(f"invalid channel family {p!r}: '*' and '>' are whole tokens")
        if "*" not in tokens and ">" not in tokens:
            raise FamilyError(f"channel family {p!r} has no wildcard")
        out.append(p)
    return out


def family_of(patterns: list[str], channel: str) -> str | None:
    """The first pattern the channel matches (patterns in their configured order)."""
    for p in patterns:
        if pattern_matches(p, channel):
            return p
    return None


def seq_of(headers) -> int | None:
    """The channel sequence stored with a message, or None (not a family message)."""
    if not headers:
        return None
    value = headers.get(SEQ_HEADER)
    return int(value) if value else None


def _not_found():
    # Imported here, not at the top: options.py reads the patterns on the way
    # to spawning nats-server, where nats-py (with aiohttp) would cost ~180 ms
    # in series; startup.py imports it in a thread meanwhile.
    from nats.js.errors import NotFoundError

    return NotFoundError


async def last_of(jsm, stream: str, subject: str) -> tuple[int, int]:
    """(channel seq, stream seq) of the channel's last message; (0, 0) if none."""
    NotFoundError = _not_found()
    try:
        msg = await jsm.get_last_msg(stream, subject, direct=True)
    except NotFoundError:
        return 0, 0
    return seq_of(msg.headers) or 0, msg.seq


async def last_is(jsm, stream: str, subject: str, guid: str, seq: int) -> int | None:
    """The stream seq of the channel's last message if it is the one stored
    under `guid` as channel seq `seq`, else None."""
    NotFoundError = _not_found()
    try:
        msg = await jsm.get_last_msg(stream, subject, direct=True)
    except NotFoundError:
        return None
    headers = msg.headers or {}
    if headers.get("Nats-Msg-Id") == guid and seq_of(headers) == seq:
        return msg.seq
    return None


async def first_at_or_after(jsm, stream: str, subject: str, sseq: int):
    """The channel's first message at stream seq >= sseq: (channel seq, stream
    seq), or None when it has none there."""
    NotFoundError = _not_found()
    try:
        msg = await jsm.get_msg(stream, seq=max(sseq, 1), subject=subject, direct=True, next=True)
    except NotFoundError:
        return None
    return seq_of(msg.headers) or 0, msg.seq


async def stream_seq_for(jsm, stream: str, subject: str, want: int) -> int | None:
    """The stream seq of the channel's first message with channel seq >= want,
    or None if there is none. Channel seqs grow with stream seqs, so a binary
    search over stream seqs: about log2(stream length) lookups."""
    first = await first_at_or_after(jsm, stream, subject, 1)
    if first is None:
        return None
    if first[0] >= want:
        return first[1]
    last_ch, last_s = await last_of(jsm, stream, subject)
    if last_ch < want:
        return None
    # P(p): the channel's first message at stream seq >= p has channel seq >=
    # want. P is monotone; P(lo) is false and P(hi) true.
    lo, hi = first[1], last_s
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await first_at_or_after(jsm, stream, subject, mid)
        if found is not None and found[0] >= want:
            hi = mid
        else:  # the message found is itself below want: P is false up to it
            lo = max(mid, found[1]) if found is not None else mid
    found = await first_at_or_after(jsm, stream, subject, hi)
    return found[1] if found is not None else None


async def channel_state(jsm, stream: str, subject: str) -> dict:
    """A family channel's /channelsz figures. JetStream keeps no bytes per
    subject, so bytes are 0 (the family's stream has the family-wide total)."""
    info = await jsm.stream_info(stream, subjects_filter=subject)
    msgs = (info.state.subjects or {}).get(subject, 0)
    if not msgs:
        return {"msgs": 0, "bytes": 0, "first_seq": 0, "last_seq": 0}
    first = await first_at_or_after(jsm, stream, subject, 1)
    last, _ = await last_of(jsm, stream, subject)
    return {"msgs": msgs, "bytes": 0, "first_seq": first[0] if first else 0, "last_seq": last}
