"""A JetStream API call refused with 503 (busy) is asked again; other errors are not."""

from __future__ import annotations

import pytest
from nats.js.errors import NotFoundError, ServiceUnavailableError
from stanfleet.streaming.jsapi import RetryingJSM


class Flaky:
    """Answers 503 `busy` times, then the result; counts the calls."""

    def __init__(self, busy: int, error: Exception | None = None):
        self.busy, self.error, self.calls = busy, error, 0

    async def add_consumer(self, stream, config):
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.busy:
            raise ServiceUnavailableError()
        return (stream, config)

    def plain(self):
        return "not a coroutine"


async def test_busy_answers_are_retried_until_one_succeeds():
    jsm = Flaky(busy=3)
    assert await RetryingJSM(jsm, first_pause=0.001).add_consumer("S", "C") == ("S", "C")
    assert jsm.calls == 4


async def test_a_lasting_503_reaches_the_caller_after_the_last_attempt():
    jsm = Flaky(busy=100)
    with pytest.raises(ServiceUnavailableError):
        await RetryingJSM(jsm, attempts=3, first_pause=0.001).add_consumer("S", "C")
    assert jsm.calls == 3


async def test_other_errors_are_not_retried():
    jsm = Flaky(busy=0, error=NotFoundError())
    with pytest.raises(NotFoundError):
        await RetryingJSM(jsm, first_pause=0.001).add_consumer("S", "C")
    assert jsm.calls == 1
    assert RetryingJSM(jsm).plain() == "not a coroutine"
