"""The JetStream API as the streaming server calls it: a busy server is asked again.

nats-server answers a JetStream API request with 503 (nats-py's
ServiceUnavailableError) when it cannot take it right now, e.g. with its API
queue full on a loaded machine, and nothing was done. Such a request is safe
to repeat, so instead of refusing a client's subscribe (or failing start-up)
we repeat it a few times with a short, growing pause. Any other error, and a
503 that outlasts the retries, goes to the caller as before.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging

from nats.js.errors import NotFoundError, ServiceUnavailableError

log = logging.getLogger("stanfleet.streaming")

DEFAULT_ATTEMPTS = 6
DEFAULT_FIRST_PAUSE = 0.05  # seconds; doubled per attempt: about 1.5 s in all
LIST_PAGE = 256  # JetStream's list limit (JSApiListLimit)


class RetryingJSM:
    """A JetStreamManager whose coroutine methods retry on ServiceUnavailableError."""

    def __init__(self, jsm, attempts: int = DEFAULT_ATTEMPTS,
                 first_pause: float = DEFAULT_FIRST_PAUSE):
        self._jsm = jsm
        self._attempts = attempts
        self._first_pause = first_pause

    def __getattr__(self, name: str):
        attr = getattr(self._jsm, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args, **kwargs):
            pause = self._first_pause
            for attempt in range(1, self._attempts + 1):
                try:
                    return await attr(*args, **kwargs)
                except ServiceUnavailableError:
                    if attempt == self._attempts:
                        raise
                    log.debug("JetStream API %s unavailable, attempt %d; retrying", name, attempt)
                    await asyncio.sleep(pause)
                    pause *= 2

        return call


async def list_consumers(jsm, stream: str) -> dict:
    """Every consumer of stream, by name: JetStream lists at most 256 per
    request, so this pages on until a page comes back short."""
    out = {}
    while True:
        try:
            page = await jsm.consumers_info(stream, offset=len(out) or None)
        except NotFoundError:
            return out  # the stream is gone: so are its consumers
        for info in page:
            out[info.name] = info
        if len(page) < LIST_PAGE or not page:
            return out


async def stream_names_on(jsm, subject: str) -> list[str]:
    """The streams whose subjects overlap subject (JetStream's STREAM.NAMES
    with a subject filter; nats-py asks it only for the first)."""
    names: list[str] = []
    while True:
        resp = await jsm._api_request(f"{jsm._prefix}.STREAM.NAMES",
                                      json.dumps({"subject": subject,
                                                  "offset": len(names)}).encode(),
                                      timeout=jsm._timeout)
        page = resp.get("streams") or []
        names += page
        if not page or len(names) >= resp.get("total", 0):
            return names
