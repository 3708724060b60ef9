"""Logging for long-running services: text lines for people, or JSON lines
for a log collector (`log.format` in the deployment config).

A JSON line carries ts, level, logger and msg; our log messages are already
`key=value` phrases (STYLE.md), so they stay greppable in both formats.
"""

from __future__ import annotations

import json
import logging

DEFAULT_FORMAT = "text"
DEFAULT_LEVEL = "info"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt  # here: not on the streaming server's way to ready

        doc = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(fmt: str = DEFAULT_FORMAT, level: str = DEFAULT_LEVEL) -> None:
    """Send every log record to stderr in `fmt` (text | json) from `level` up.
    Called again (on SIGHUP), it replaces the earlier setup."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_of(level))


def level_of(name: str) -> int:
    return getattr(logging, name.upper(), logging.INFO)
