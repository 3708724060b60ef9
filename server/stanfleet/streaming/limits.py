"""Store limits: server-wide defaults and per-channel overrides.

The defaults are sized for a fleet, not the original server's (100 channels,
1000 subscriptions per channel): a device owns three channels and holds a
durable on the shared `devices.releases`, so those stopped a fleet at about
33 devices, and at 1000 devices respectively. What protects the server from
one identity is its per-identity quota, not a server-wide channel count.

Overrides come from the `-sc` file, whose keys may be channel names with
wildcards (`devices.*.events`, `logs.>`); a literal key beats a wildcard, and
among wildcards the one with the most literal tokens wins. A limit left out of an override, or set to 0
in it, is inherited from the server-wide value — the original's rule.

File format (JSON, the subset of the original's config syntax that needs no
special parser):

    {"store_limits": {
        "max_channels": 1000, "max_msgs": 1000000, "max_bytes": "1GB",
        "max_age": "0", "max_subs": 100000, "max_inactivity": "0",
        "channels": {"devices.*.events": {"max_age": "720h", "max_msgs": 0}}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

# Room for 30,000 devices (3 channels each); JetStream keeps every channel as
# a stream, so the bound still stops a runaway creator long before memory does.
DEFAULT_MAX_CHANNELS = 100_000
# Subscriptions per channel: every device holds a durable on devices.releases,
# so this is the fleet size one broadcast channel can serve.
DEFAULT_MAX_SUBS = 100_000
_SIZE_UNITS = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}


@dataclass
class ChannelLimits:
    max_msgs: int = 1_000_000
    max_bytes: int = 1_000_000 * 1024
    max_age: float = 0.0  # seconds, 0 = unlimited
    max_subs: int = DEFAULT_MAX_SUBS
    max_inactivity: float = 0.0  # seconds without messages or subscriptions; 0 = forever


class LimitsError(ValueError):
    """The limits file or a limit flag is invalid."""


@dataclass
class StoreLimits:
    max_channels: int = DEFAULT_MAX_CHANNELS
    defaults: ChannelLimits = field(default_factory=ChannelLimits)
    per_channel: dict[str, ChannelLimits] = field(default_factory=dict)

    def for_channel(self, channel: str) -> ChannelLimits:
        if channel in self.per_channel:
            return self.per_channel[channel]
        best, best_score = None, -1
        for pattern, lim in self.per_channel.items():
            if pattern_matches(pattern, channel):
                score = sum(1 for t in pattern.split(".") if t not in ("*", ">"))
                if score > best_score:
                    best, best_score = lim, score
        return best or self.defaults


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether a channel falls under a pattern with NATS wildcards ('*' one token,
    '>' the rest): per-channel limits and channel families both use it."""
    p, c = pattern.split("."), channel.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(c) > i
        if i >= len(c) or (tok != "*" and tok != c[i]):
            return False
    return len(p) == len(c)


def parse_size(value) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    for unit in ("KB", "MB", "GB", "TB", "B"):
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * _SIZE_UNITS[unit])
    try:
        return int(text)
    except ValueError:
        raise LimitsError(f"invalid size {value!r} (e.g. 1000000, 512MB, 1GB)") from None


def parse_duration(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    for suffix, scale in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)):
        num = text[: -len(suffix)]
        if text.endswith(suffix) and num.replace(".", "", 1).isdigit():
            return float(num) * scale
    try:
        return float(text)
    except ValueError:
        raise LimitsError(f"invalid duration {value!r} (e.g. 30s, 10m, 24h)") from None


def _channel_limits(raw: dict, base: ChannelLimits, where: str) -> ChannelLimits:
    known = {f.name for f in fields(ChannelLimits)}
    unknown = set(raw) - known
    if unknown:
        raise LimitsError(f"{where}: unknown limit(s) {', '.join(sorted(unknown))}")
    out = replace(base)
    for key, value in raw.items():
        if key in ("max_bytes",):
            v = parse_size(value)
        elif key in ("max_age", "max_inactivity"):
            v = parse_duration(value)
        else:
            if not isinstance(value, int):
                raise LimitsError(f"{where}: {key} must be an integer")
            v = value
        if v < 0:
            raise LimitsError(f"{where}: {key} must not be negative")
        if v:  # 0 means "inherit", as in the original
            setattr(out, key, v)
    return out


def load(path: str | None, base: StoreLimits) -> StoreLimits:
    """The limits from flags (`base`), overridden by the file at `path`."""
    if not path:
        return base
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise LimitsError(f"cannot read limits file {path}: {e.strerror}") from None
    except ValueError as e:
        raise LimitsError(f"limits file {path} is not valid JSON: {e}") from None
    return from_document(doc.get("streaming", doc).get("store_limits", {}), base, path)


def from_document(store_limits: dict, base: StoreLimits, path: str) -> StoreLimits:
    """A `store_limits` block (already parsed) over the limits `base`."""
    raw = dict(store_limits)
    channels = raw.pop("channels", {}) or {}
    max_channels = raw.pop("max_channels", base.max_channels)
    if not isinstance(max_channels, int) or max_channels < 0:
        raise LimitsError(f"{path}: max_channels must be a non-negative integer")
    defaults = _channel_limits(raw, base.defaults, path)
    per_channel = {}
    for pattern, over in channels.items():
        if not isinstance(over, dict):
            raise LimitsError(f"{path}: limits of {pattern!r} must be an object")
        per_channel[pattern] = _channel_limits(over, defaults, f"{path} [{pattern}]")
    return StoreLimits(max_channels=max_channels, defaults=defaults, per_channel=per_channel)
