"""firmware/lib/stan.py on the MicroPython unix port against our streaming
server (fixture ``stan_server``, running in this test's event loop)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlparse

import nats as natspy
from mpy_runner import MicroPython
from stanfleet.pb import protocol_pb2

from tests.streaming.serverproc import ServerProcess


def driver_cfg(stan_server, client_id: str, **stan) -> str:
    url = urlparse(stan_server.nats_url)
    s = {"cluster_id": stan_server.cluster_id, "client_id": client_id, "ping_interval": 1,
         "ping_max_out": 3, "pub_ack_timeout": 10, "connect_timeout": 5, "renew_min_ms": 50,
         "renew_max_ms": 400}
    s.update(stan)
    return json.dumps({"nats": {"host": url.hostname, "port": url.port, "reconnect_min_ms": 50},
                       "stan": s})


async def test_publish_durable_manual_ack_and_redelivery(stan_server):
    cfg = driver_cfg(stan_server, "dev-1")
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
        await mp.expect("CONNECTED")
        mp.send("pub fw.ch m1")
        assert (await mp.expect("PUBACK ")).split()[1]
        # durable, manual acks, one in flight, ack_wait 1 s; m1 is held, not acked
        mp.send("sub fw.ch dur 1 1 manual first")
        await mp.expect("SUBBED")
        assert await mp.expect("SMSG") == "SMSG fw.ch 1 m1 False"
        mp.send("pub fw.ch m2")
        await mp.expect("PUBACK")
        # not acked: redelivered after ack_wait, and m2 waits behind it (max_inflight 1)
        assert await mp.expect("SMSG") == "SMSG fw.ch 1 m1 True"
        since = len(mp.lines)
        mp.send("ack 1")
        # m2 may arrive before the ACKED line: look at everything since the ack
        assert await mp.expect_all("SMSG", 1, since) == ["SMSG fw.ch 2 m2 False"]
        # close the session with m2 unacked; the durable survives, and none of
        # the session's inboxes (subscription, heartbeat, ping, PubAck) stays
        # subscribed on the NATS client
        mp.send("close")
        assert await mp.expect("SCLOSED") == "SCLOSED left=0"
        mp.send("quit")
        assert await mp.finish() == 0

    # a new process with the same clientID resumes the durable: m2 comes again, m1 does not
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
        await mp.expect("CONNECTED")
        mp.send("sub fw.ch dur 30 1 manual first")
        await mp.expect("SUBBED")
        assert await mp.expect("SMSG") == "SMSG fw.ch 2 m2 True"
        mp.send("ack 2")
        await mp.expect("ACKED 2")
        mp.send("pub fw.ch m3")
        await mp.expect("PUBACK")
        assert await mp.expect("SMSG") == "SMSG fw.ch 3 m3 False"


async def test_auto_ack_subscription_gets_each_message_once(stan_server):
    cfg = driver_cfg(stan_server, "dev-2")
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
        await mp.expect("CONNECTED")
        mp.send("sub fw.auto - 1 4 auto new")
        await mp.expect("SUBBED")
        since = len(mp.lines)
        for i in range(1, 6):
            mp.send(f"pub fw.auto a{i}")
        assert len(await mp.expect_all("PUBACK", 5, since)) == 5
        assert await mp.expect_all("SMSG", 5, since) == [
            f"SMSG fw.auto {i} a{i} False" for i in range(1, 6)]
        # acked automatically: the next delivery is the next message, not a redelivery
        since = len(mp.lines)
        mp.send("pub fw.auto a6")
        assert await mp.expect_all("SMSG", 1, since) == ["SMSG fw.auto 6 a6 False"]


async def test_duplicate_client_id_is_refused_while_first_answers_heartbeats(stan_server):
    cfg = driver_cfg(stan_server, "dev-3")
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as first:
        await first.expect("CONNECTED")
        async with await MicroPython.start("stan_driver.py", cfg=cfg) as second:
            line = await second.expect("CONNECT_ERROR")
            assert "StanError" in line and "already registered" in line
        # the first is still in business
        first.send("pub fw.dup x")
        await first.expect("PUBACK")


async def test_session_closed_by_server_is_renewed_and_durable_resubscribed(stan_server):
    cfg = driver_cfg(stan_server, "dev-4")
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
        await mp.expect("CONNECTED")
        mp.send("sub fw.renew dur 30 1 manual first")
        await mp.expect("SUBBED")
        mp.send("pub fw.renew before")
        await mp.expect("PUBACK")
        assert await mp.expect("SMSG") == "SMSG fw.renew 1 before False"
        # someone closes our session on the server: the next PingResponse carries an error
        nc = await natspy.connect(stan_server.nats_url)
        req = protocol_pb2.CloseRequest(client_id="dev-4").SerializeToString()
        resp = await nc.request(f"_STAN.close.{stan_server.cluster_id}", req, timeout=5)
        assert protocol_pb2.CloseResponse.FromString(resp.data).error == ""
        await nc.close()
        lost = await mp.expect("LOST")
        assert lost != "LOST ping_timeout", lost
        await mp.expect("SESSION renewed")
        # the durable came back: the unacked message is redelivered, new ones flow
        assert await mp.expect("SMSG") == "SMSG fw.renew 1 before True"
        mp.send("ack 1")
        await mp.expect("ACKED 1")
        mp.send("pub fw.renew after")
        await mp.expect("PUBACK")
        assert await mp.expect("SMSG fw.renew 2") == "SMSG fw.renew 2 after False"


async def test_durable_close_keeps_position_and_unsubscribe_deletes_it(stan_server):
    cfg = driver_cfg(stan_server, "dev-5")
    async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
        await mp.expect("CONNECTED")
        mp.send("sub fw.u keep 30 8 auto first")
        await mp.expect("SUBBED")
        since = len(mp.lines)
        mp.send("pub fw.u u1")
        assert await mp.expect_all("SMSG", 1, since) == ["SMSG fw.u 1 u1 False"]
        # close: the durable keeps its position (u1 acked)
        mp.send("unsub fw.u close")
        await mp.expect("UNSUBBED")
        mp.send("pub fw.u u2")
        await mp.expect("PUBACK")
        since = len(mp.lines)
        mp.send("sub fw.u keep 30 8 auto first")
        assert await mp.expect_all("SMSG", 1, since) == ["SMSG fw.u 2 u2 False"]
        # unsubscribe: the durable is gone, so "first" starts again at 1
        mp.send("unsub fw.u delete")
        await mp.expect("UNSUBBED")
        since = len(mp.lines)
        mp.send("sub fw.u keep 30 8 auto first")
        assert await mp.expect_all("SMSG", 2, since) == [
            "SMSG fw.u 1 u1 False", "SMSG fw.u 2 u2 False"]


async def test_inboxes_use_the_configured_prefix(stan_server):
    """Under the server's authorization a user may only use _INBOX.<user>.*:
    request replies, the heartbeat inbox and subscription inboxes follow
    inbox_prefix (PubAcks stay on _STAN.acks.*, docs/security-design.md)."""
    prefix = "_INBOX.device-9"
    cfg = json.loads(driver_cfg(stan_server, "dev-9"))
    cfg["nats"]["inbox_prefix"] = prefix
    snoop = await natspy.connect(stan_server.nats_url)
    replies = []

    async def on_discover(m) -> None:
        replies.append(m.reply)

    await snoop.subscribe(f"_STAN.discover.{stan_server.cluster_id}", cb=on_discover)
    await snoop.flush()
    try:
        async with await MicroPython.start("stan_driver.py", cfg=json.dumps(cfg)) as mp:
            await mp.expect("CONNECTED")
            mp.send("sub fw.inbox - 30 1 auto new")
            await mp.expect("SUBBED")
            server = stan_server.server
            assert server.clients.clients["dev-9"].hb_inbox.startswith(prefix + ".")
            inboxes = [m.inbox for m in server.subs.members.values()]
            assert inboxes and all(i.startswith(prefix + ".") for i in inboxes)
            assert replies and all(r.startswith(prefix + ".") for r in replies)
    finally:
        await snoop.close()


async def test_pings_only_in_an_interval_without_a_puback(stan_server):
    # ping_interval 1 s: idle, the device pings; publishing faster than that,
    # each PubAck stands for the ping, so none is sent.
    pings: asyncio.Queue = asyncio.Queue()
    nc = await natspy.connect(stan_server.nats_url)

    async def on_ping(m):
        pings.put_nowait(m)
    await nc.subscribe(f"_STAN.discover.{stan_server.cluster_id}.pings", cb=on_ping)
    try:
        async with await MicroPython.start("stan_driver.py", cfg=driver_cfg(
                stan_server, "dev-pinger")) as mp:
            await mp.expect("CONNECTED")
            await asyncio.wait_for(pings.get(), 5)
            mp.send("pub fw.busy 0")
            await mp.expect("PUBACK")
            await nc.flush()  # a ping sent before that publish has reached us by now
            while not pings.empty():
                pings.get_nowait()
            loop = asyncio.get_running_loop()
            until = loop.time() + 3.5  # three ticks of the ping timer
            while loop.time() < until:
                mp.send("pub fw.busy 1")
                await mp.expect("PUBACK")
                await asyncio.sleep(0.2)  # the device's pace, not a wait for an event
            assert pings.empty(), f"{pings.qsize()} pings while publishing"
            await asyncio.wait_for(pings.get(), 5)  # quiet again: it pings
    finally:
        await nc.close()


async def test_a_silent_server_does_not_end_the_session(broker, tmp_path):
    # The streaming server is SIGKILLed and restarted on the same store: the
    # device's pings go unanswered meanwhile, yet it keeps its session (the
    # server restores it) instead of asking a server that cannot answer for
    # a new one, as stan.go's ping_max_out rule would; a publish meanwhile
    # fails at once instead of waiting out its PubAck timeout.
    proc = await ServerProcess.on_broker(broker.url, tmp_path).start()
    try:
        url = urlparse(broker.url)
        cfg = json.dumps({"nats": {"host": url.hostname, "port": url.port},
                          "stan": {"cluster_id": "test-cluster", "client_id": "dev-silent",
                                   "ping_interval": 1, "ping_max_out": 2,
                                   "pub_ack_timeout": 10, "renew_min_ms": 50}})
        async with await MicroPython.start("stan_driver.py", cfg=cfg) as mp:
            await mp.expect("CONNECTED")
            mp.send("pub fw.silent before")
            await mp.expect("PUBACK")
            await proc.kill()
            await mp.expect("SLOG stan event=server_silent pings=2")
            # nats-server answers for the absent server at once (no responders),
            # well within the 10 s PubAck timeout
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            mp.send("pub fw.silent during")
            assert await mp.expect("ERROR pub") == "ERROR pub StanError no responders"
            assert loop.time() - t0 < 5
            await proc.start()
            mp.send("pub fw.silent after")
            assert (await mp.expect("PUBACK")).split()[1]
            assert not [x for x in mp.lines if x.startswith(("LOST", "SESSION"))], mp.lines
    finally:
        await proc.stop()
