"""Monitoring endpoints (-m PORT) against a running server and real clients."""

from __future__ import annotations

import platform
import re

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.streaming.channels import REGISTRY_CHANNEL, ChannelLimits
from stanfleet.streaming.limits import StoreLimits
from stanfleet.streaming.monitor import uptime

from ..waiting import eventually
from .rawstan import RawStan


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def client(stan, client_id: str) -> RawStan:
    c = await RawStan.open(stan.nats_url, stan.cluster_id, client_id)
    assert (await c.connect()).error == ""
    return c


async def get(http, stan, path: str, status: int = 200):
    url = f"http://127.0.0.1:{stan.server.monitor_port}{path}"
    async with http.get(url) as r:
        assert r.status == status, await r.text()
        if r.content_type == "application/json":
            return await r.json()
        return await r.text()


async def stream_totals(c: RawStan, stan) -> tuple[int, int]:
    js = c.nc.jsm()
    msgs = size = 0
    for ch in stan.server.channels.channels.values():
        st = (await js.stream_info(ch.stream)).state
        msgs, size = msgs + st.messages, size + st.bytes
    return msgs, size


async def announced(c: RawStan, stan, n: int) -> None:
    """Wait until JetStream holds the server's n channel announcements: they are
    stored on the registry channel without a PubAck to wait for."""
    js = c.nc.jsm()

    async def stored():
        ch = stan.server.channels.channels.get(REGISTRY_CHANNEL)
        # Known before its stream is created: asked only once it is.
        return ch is not None and ch.ready.done() and \
            (await js.stream_info(ch.stream)).state.messages == n

    await eventually(stored)


def registry_in(stan) -> tuple[int, int]:
    ch = stan.server.channels.channels[REGISTRY_CHANNEL]
    return ch.msgs_in, ch.bytes_in


async def test_no_monitor_without_port(make_stan_server):
    stan = await make_stan_server()
    assert stan.server.monitor is None and stan.server.monitor_port is None


async def test_serverz_counts_clients_subscriptions_channels_and_traffic(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    assert stan.server.monitor_port > 0
    c1, c2 = await client(stan, "c1"), await client(stan, "c2")
    for data in (b"a", b"bb", b"ccc"):
        assert (await c1.publish("temps", data)).error == ""
    assert (await c1.publish("events", b"dddd")).error == ""
    sub = await c2.subscribe("temps", "in.temps", start_position=pb.First)
    assert [(await sub.next()).data for _ in range(3)] == [b"a", b"bb", b"ccc"]
    await announced(c1, stan, 2)
    reg_msgs, reg_bytes = registry_in(stan)
    assert reg_msgs == 2

    z = await get(http, stan, "/streaming/serverz")
    assert z["cluster_id"] == stan.cluster_id and z["server_id"]
    assert z["state"] == "STANDALONE" and platform.python_version() in z["go"]
    assert z["version"] and z["now"] >= z["start_time"]
    assert re.fullmatch(r"(\d+[ydhm])*\d+s", z["uptime"])
    assert (z["clients"], z["subscriptions"], z["channels"]) == (2, 1, 3)  # and the registry
    assert (z["in_msgs"], z["in_bytes"]) == (4 + reg_msgs, 10 + reg_bytes)
    assert (z["out_msgs"], z["out_bytes"]) == (3, 6)
    assert (z["total_msgs"], z["total_bytes"]) == await stream_totals(c1, stan)
    assert z["total_bytes"] > 10  # JetStream counts subjects and headers too
    assert z["max_fds"] >= 0 and z["open_fds"] >= 0


def test_uptime_format():
    assert uptime(5) == "5s"
    assert uptime(3723) == "1h2m3s"
    assert uptime(86400 + 60) == "1d0h1m0s"
    assert uptime(366 * 86400) == "1y1d0h0m0s"


async def test_storez_reports_type_limits_and_totals(make_stan_server, http):
    limits = StoreLimits(max_channels=10, defaults=ChannelLimits(
        max_msgs=500, max_bytes=4096, max_age=3600, max_subs=7, max_inactivity=60),
        per_channel={"devices.*.events": ChannelLimits(max_msgs=5, max_bytes=4096,
                                                       max_age=600.5, max_subs=7)})
    stan = await make_stan_server(monitor_port=0, store="memory", limits=limits)
    c = await client(stan, "c1")
    assert (await c.publish("devices.1.events", b"xyz")).error == ""
    await announced(c, stan, 1)

    z = await get(http, stan, "/streaming/storez")
    assert z["cluster_id"] == stan.cluster_id and z["server_id"] and z["now"]
    assert z["type"] == "MEMORY" and z["backend"] == "JetStream"
    assert z["limits"] == {
        "max_channels": 10, "max_msgs": 500, "max_bytes": 4096, "max_age": 3600 * 10**9,
        "max_subscriptions": 7, "max_inactivity": 60 * 10**9,
        "channels": {"devices.*.events": {
            "max_msgs": 5, "max_bytes": 4096, "max_age": 600_500_000_000,
            "max_subscriptions": 7, "max_inactivity": 0}}}
    assert (z["total_msgs"], z["total_bytes"]) == await stream_totals(c, stan)
    assert z["total_msgs"] == 2  # the message and the channel's announcement
    # Both endpoints name the same server.
    assert (await get(http, stan, "/streaming/serverz"))["server_id"] == z["server_id"]


async def test_clientsz_paging_single_client_and_subscriptions(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    clients = {cid: await client(stan, cid) for cid in ("c3", "c1", "c2")}
    sub = await clients["c2"].subscribe("temps", "in.c2", durable_name="dur", max_in_flight=5)

    z = await get(http, stan, "/streaming/clientsz")
    assert (z["offset"], z["limit"], z["count"], z["total"]) == (0, 1024, 3, 3)
    assert [c["id"] for c in z["clients"]] == ["c1", "c2", "c3"]
    assert z["clients"][0]["hb_inbox"] == clients["c1"].hb_inbox
    assert "subscriptions" not in z["clients"][0]

    z = await get(http, stan, "/streaming/clientsz?limit=2")
    assert [c["id"] for c in z["clients"]] == ["c1", "c2"] and (z["count"], z["total"]) == (2, 3)
    z = await get(http, stan, "/streaming/clientsz?offset=2&limit=2")
    assert [c["id"] for c in z["clients"]] == ["c3"] and z["offset"] == 2
    z = await get(http, stan, "/streaming/clientsz?offset=10")
    assert (z["clients"], z["count"], z["total"]) == ([], 0, 3)

    one = await get(http, stan, "/streaming/clientsz?client=c2&subs=1")
    assert (one["id"], one["hb_inbox"]) == ("c2", clients["c2"].hb_inbox)
    assert list(one["subscriptions"]) == ["temps"]
    (s,) = one["subscriptions"]["temps"]
    assert s["client_id"] == "c2" and s["inbox"] == "in.c2" and s["ack_inbox"] == sub.ack_inbox
    assert (s["durable_name"], s["is_durable"], s["is_offline"]) == ("dur", True, False)
    assert (s["max_inflight"], s["ack_wait"], s["pending_count"]) == (5, 30, 0)

    z = await get(http, stan, "/streaming/clientsz?subs=1")
    assert z["clients"][0]["subscriptions"] == {}  # c1 has none

    err = await get(http, stan, "/streaming/clientsz?client=nobody", status=404)
    assert "nobody" in err["error"]


async def test_channelsz_names_and_paging(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    c = await client(stan, "c1")
    for name in ("b.two", "a.one", "c.three"):
        assert (await c.publish(name, b"x")).error == ""

    names = sorted(["a.one", "b.two", "c.three", REGISTRY_CHANNEL])
    z = await get(http, stan, "/streaming/channelsz")
    assert z["names"] == names and "channels" not in z
    assert (z["offset"], z["limit"], z["count"], z["total"]) == (0, 1024, 4, 4)
    z = await get(http, stan, "/streaming/channelsz?offset=1&limit=2")
    assert z["names"] == names[1:3] and (z["count"], z["total"]) == (2, 4)
    z = await get(http, stan, "/streaming/channelsz?offset=4")
    assert z["names"] == [] and (z["count"], z["total"]) == (0, 4)

    z = await get(http, stan, "/streaming/channelsz?subs=1&limit=2")
    assert [ch["name"] for ch in z["channels"]] == ["a.one", "b.two"] and "names" not in z
    assert z["channels"][0]["msgs"] == 1 and z["channels"][0]["subscriptions"] == []

    err = await get(http, stan, "/streaming/channelsz?channel=no.such", status=404)
    assert "no.such" in err["error"]


async def test_channelsz_lists_online_and_offline_subscriptions(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    pub, c2 = await client(stan, "pub"), await client(stan, "c2")
    for i in range(3):
        assert (await pub.publish("temps", b"m%d" % i)).error == ""
    # Two in flight and never acked: stalled at max_in_flight.
    slow = await c2.subscribe("temps", "in.slow", start_position=pb.First, max_in_flight=2)
    assert [(await slow.next()).sequence for _ in range(2)] == [1, 2]
    queue = await c2.subscribe("temps", "in.q", q_group="workers", start_position=pb.First,
                               max_in_flight=10)
    assert [(await queue.next()).sequence for _ in range(3)] == [1, 2, 3]
    durable = await c2.subscribe("temps", "in.dur", durable_name="keep", ack_wait_in_secs=7,
                                 max_in_flight=4, start_position=pb.First)
    for _ in range(3):
        await durable.ack(await durable.next())
    member = stan.server.subs.by_ack_inbox[durable.ack_inbox]

    async def acks_processed():
        return not member.outstanding

    await eventually(acks_processed)  # else closing would hand them back unacked
    assert await c2.end(durable, unsubscribe=False) == ""
    gone = await c2.subscribe("temps", "in.gone", durable_name="gone")
    assert await c2.end(gone, unsubscribe=True) == ""

    ch = await get(http, stan, "/streaming/channelsz?channel=temps&subs=1")
    assert (ch["name"], ch["msgs"], ch["first_seq"], ch["last_seq"]) == ("temps", 3, 1, 3)
    assert ch["bytes"] > 0
    subs = {s["inbox"] or s["durable_name"]: s for s in ch["subscriptions"]}
    assert set(subs) == {"in.slow", "in.q", "keep"}

    s = subs["in.slow"]
    assert (s["client_id"], s["ack_inbox"], s["is_durable"], s["is_offline"]) == (
        "c2", slow.ack_inbox, False, False)
    assert (s["last_sent"], s["pending_count"], s["max_inflight"], s["is_stalled"]) == (
        2, 2, 2, True)
    q = subs["in.q"]
    assert (q["queue_name"], q["durable_name"], q["is_durable"]) == ("workers", "", False)
    assert (q["last_sent"], q["pending_count"], q["is_stalled"]) == (3, 3, False)

    off = subs["keep"]
    assert (off["client_id"], off["durable_name"], off["is_durable"], off["is_offline"]) == (
        "c2", "keep", True, True)
    assert (off["max_inflight"], off["ack_wait"], off["last_sent"]) == (4, 7, 3)
    assert off["is_stalled"] is False

    async def offline_acks_recorded():  # JetStream applies acks apart from its API
        ch = await get(http, stan, "/streaming/channelsz?channel=temps&subs=1")
        return [s["pending_count"] for s in ch["subscriptions"] if s["is_offline"]] == [0]

    await eventually(offline_acks_recorded)

    # Without subs=1 only the message state.
    ch = await get(http, stan, "/streaming/channelsz?channel=temps")
    assert "subscriptions" not in ch and ch["msgs"] == 3

    # The offline durable resumes: listed once, online again.
    back = await c2.subscribe("temps", "in.back", durable_name="keep")
    assert back.error == ""
    ch = await get(http, stan, "/streaming/channelsz?channel=temps&subs=1")
    keep = [s for s in ch["subscriptions"] if s["durable_name"] == "keep"]
    assert [(s["inbox"], s["is_offline"]) for s in keep] == [("in.back", False)]


@pytest.mark.parametrize("query, word", [
    ("/streaming/clientsz?limit=abc", "limit"),
    ("/streaming/clientsz?offset=-1", "offset"),
    ("/streaming/channelsz?limit=0", "limit"),
    ("/streaming/channelsz?offset=1.5", "offset"),
    ("/streaming/channelsz?subs=yes", "subs"),
    ("/streaming/clientsz?client=c1&subs=2", "subs"),
])
async def test_bad_query_values_are_400_with_a_json_error(make_stan_server, http, query, word):
    stan = await make_stan_server(monitor_port=0)
    await client(stan, "c1")
    err = await get(http, stan, query, status=400)
    assert word in err["error"]


async def test_is_ft_active(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    assert await get(http, stan, "/streaming/isFTActive") == ""


async def test_metrics(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    pub, c2 = await client(stan, "pub"), await client(stan, "c2")
    for data in (b"one", b"two!"):
        assert (await pub.publish("temps", data)).error == ""
    sub = await c2.subscribe("temps", "in.t", start_position=pb.First, ack_wait_in_secs=1,
                             max_in_flight=1)
    first = await sub.next()
    again = await sub.next()  # not acked within ack_wait: redelivered
    assert (again.sequence, again.redelivered) == (first.sequence, True)

    reg_msgs, reg_bytes = registry_in(stan)
    assert reg_msgs == 1

    async def scrape() -> dict:
        text = await get(http, stan, "/metrics")
        return {s.name: s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples}

    async def all_stores_timed():  # the announcement's store-ack has no waiter
        return (await scrape())["stan_publish_latency_seconds_count"] == 2 + reg_msgs

    await eventually(all_stores_timed)
    samples = await scrape()
    assert samples["stan_publish_latency_seconds_sum"] > 0
    assert samples["stan_in_msgs_total"] == 2 + reg_msgs
    assert samples["stan_in_bytes_total"] == 7 + reg_bytes
    assert samples["stan_out_msgs_total"] == 2 and samples["stan_out_bytes_total"] == 6
    assert samples["stan_redeliveries_total"] == 1
    assert (samples["stan_clients"], samples["stan_subscriptions"], samples["stan_channels"]) == (
        2, 1, 2)


async def test_monitor_stops_with_the_server(make_stan_server, http):
    stan = await make_stan_server(monitor_port=0)
    await get(http, stan, "/streaming/serverz")
    await stan.server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, stan, "/streaming/serverz")
