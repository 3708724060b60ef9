# Opening the link: the NATS connection and the STAN session with the
# device's two durables (app/device.py). Loaded to connect and dropped once
# connected (Device._online): NATS reconnects and STAN session renewals are
# the clients' own, so none of this runs again in a boot, and as .mpy files
# its code would take about 3 KB of a connected device's heap.

import asyncio

import nats
import pb
import stan

from app.device import RETRY_MIN_MS, backoff, log


def parse_nats_url(url):
    """(tls, host, port) of nats://, tls:// or host:port."""
    tls = url.startswith("tls://")
    if "://" in url:
        url = url.split("://", 1)[1]
    host, _, port = url.rpartition(":")
    if not host:
        host, port = port, "4222"
    return tls, host, int(port)


async def connect_nats(dev):
    cfg = dev.cfg
    urls = cfg["nats"]
    if isinstance(urls, str):
        urls = [urls]
    user = cfg.get("user")
    # Under the server's authorization a user's inboxes are _INBOX.<user>.*
    inbox = cfg.get("inbox_prefix") or ("_INBOX." + user if user else "_INBOX")
    i = 0
    delay = RETRY_MIN_MS
    while True:
        tls, host, port = parse_nats_url(urls[i % len(urls)])
        nc = nats.Client({
            "host": host, "port": port, "tls": tls, "ca_der": cfg.get("ca"),
            "server_hostname": cfg.get("server_hostname"),
            "user": user, "password": cfg.get("password"),
            "token": cfg.get("token"), "name": dev.client_id, "inbox_prefix": inbox,
            "on_disconnected": dev.on_link_down,
            "on_connected": dev.on_link_up,
        })
        try:
            await nc.connect()
            return nc
        except Exception as e:  # noqa: BLE001 - no server yet, bad credentials: retry
            log("stanfleet: nats connect failed host=%s error=%r" % (host, e))
            i += 1
            delay = await backoff(delay)


async def connect_stan(dev, nc):
    """The STAN session, in dev.sc, with the cfg and releases durables."""
    delay = RETRY_MIN_MS
    while True:
        sc = await open_stan(dev, nc)
        dev.sc = sc  # before subscribing: a callback acks through it
        try:
            await subscribe(dev, sc)
            return
        except stan.StanError as e:
            # The server registered an earlier attempt whose reply never came
            # (timed out here): that subscription holds the durable and every
            # retry in this session is refused. Closing the session drops it;
            # the durable stays and the next session resumes it.
            log("stanfleet: %s, opening a new session" % e)
            try:
                await asyncio.wait_for(sc.close(), 10)
            except Exception:  # noqa: BLE001 - the next session replaces it anyway
                pass
            delay = await backoff(delay)  # should another process hold it


async def open_stan(dev, nc):
    sc = stan.Stan(nc, {
        "cluster_id": dev.cfg.get("cluster_id", "test-cluster"),
        "client_id": dev.client_id,
        "on_session": dev.on_session,
        "on_session_lost": dev.on_session_lost,
    })
    delay = RETRY_MIN_MS
    while True:
        try:
            await sc.connect()
            return sc
        except Exception as e:  # noqa: BLE001 - streaming server not there yet
            log("stanfleet: stan connect failed error=%r" % (e,))
            delay = await backoff(delay)


async def subscribe(dev, sc):
    """The cfg and releases durables. Raises StanError for a duplicate
    durable (see connect_stan); anything else is retried."""
    # Releases: more than one in flight, so a release that keeps failing
    # (and stays unacked) does not hold back a newer one that fixes it.
    for channel, cb, durable, ack_wait, inflight in (
        ("devices.%s.cfg" % dev.id, dev.on_cfg, "cfg", 30, 1),
        ("devices.releases", dev.on_release, "releases", dev.cfg.get("release_ack_wait", 90), 4),
    ):
        delay = RETRY_MIN_MS
        while True:
            try:
                # A new durable starts at the channel's last message: a device
                # provisioned after a cfg or release was sent still gets it.
                await sc.subscribe(channel, cb, durable=durable, manual_acks=True,
                                   ack_wait=ack_wait, max_inflight=inflight,
                                   start=pb.LAST_RECEIVED)
                break
            except Exception as e:  # noqa: BLE001 - retry until the server answers
                log("stanfleet: subscribe %s failed error=%r" % (channel, e))
                if isinstance(e, stan.StanError) and "duplicate durable" in str(e):
                    raise
                delay = await backoff(delay)
