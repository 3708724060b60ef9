"""Go's error texts, byte for byte: the same requests against the reference
nats-streaming-server and ours, replies compared (errcases.py lists them)."""

from __future__ import annotations

from . import errcases
from .goref import GoServer, require_go
from .serverproc import ServerProcess, free_port


async def _replies(start) -> list[tuple[str, str]]:
    port = free_port()
    server = await start(port)
    try:
        return await errcases.run(f"nats://127.0.0.1:{port}")
    finally:
        await server.stop()


async def test_every_error_reply_is_the_go_servers():
    require_go()
    flags = ("-a", "127.0.0.1", *errcases.SERVER_FLAGS)
    go = await _replies(lambda port: GoServer(*flags, "-p", str(port)).start())
    ours = await _replies(lambda port: ServerProcess(*flags, "-p", str(port)).start())
    assert [case for case, _ in ours] == [case for case, _ in go]
    assert all(reply != "(no reply)" or case.startswith("publish: subject")
               for case, reply in go), go  # the scenario reaches what it means to
    different = [(case, g, o) for (case, g), (_, o) in zip(go, ours) if g != o]
    assert different == [], "\n".join(f"{c}: go={g!r} ours={o!r}" for c, g, o in different)
    errors = {reply for _, reply in go if reply and reply != "(no reply)"}
    assert len(errors) >= 12  # most of the texts a client can see are covered
