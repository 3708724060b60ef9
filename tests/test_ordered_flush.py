"""flush() round trips in order (stanfleet/ordered_flush.py), against a real nats-server."""

from __future__ import annotations

import nats
from stanfleet import ordered_flush


async def test_a_flush_reaches_the_server_after_what_was_queued_before_it(broker):
    """conftest installs the fix; nats-py as released writes the PING first,
    and this test then fails (the SUB goes out after it)."""
    assert ordered_flush.install()
    nc = await nats.connect(broker.url)
    written: list[bytes] = []
    transport = nc._transport
    write, writelines = transport.write, transport.writelines
    transport.write = lambda data: (written.append(bytes(data)), write(data))[1]
    transport.writelines = lambda lines: (written.extend(bytes(x) for x in lines),
                                          writelines(lines))[1]
    try:
        await nc.subscribe("queued.first")
        await nc.flush()
        out = b"".join(written)
        assert out.index(b"SUB queued.first") < out.index(b"PING\r\n"), out
    finally:
        await nc.close()


async def test_a_subscription_made_before_a_flush_gets_the_next_publish(broker):
    """What the ordering is for: another connection's publish right after the
    flush finds the subscriber (about 1 in 300 did not, under load)."""
    watcher, publisher = await nats.connect(broker.url), await nats.connect(broker.url)
    try:
        for i in range(50):
            sub = await watcher.subscribe(f"first.{i}")
            await watcher.flush()
            await publisher.publish(f"first.{i}", b"hello")
            assert (await sub.next_msg(timeout=5)).data == b"hello"
    finally:
        await watcher.close()
        await publisher.close()
