# MicroPython side of bench/heap_parts.py: runs in a provisioned flash
# directory and builds the device up piece by piece, printing what each piece
# keeps on the heap after a collection: "PART <bytes> <what>".
import asyncio
import gc
import sys


def live():
    gc.collect()
    return gc.mem_alloc()


_last = [live()]


def part(what):
    a = live()
    print("PART %d %s" % (a - _last[0], what))
    _last[0] = a


import otaboot  # noqa: E402

otaboot.select()
part("boot: otaboot, slot choice")
from app import device  # noqa: E402

part("app imports (device, nats, stan, pb, hal, buffer)")
d = device.Device()
part("Device(): config.json, settings, offline buffer (%d readings)" % d.buf.size)
if d.cfg.get("ca"):
    import tlsctx

    tlsctx.context(d.cfg["ca"])
    part("TLS context with the CA")


async def online():
    # As Device._online(): everything that holds the link lives in this frame,
    # which is garbage once it returns.
    from app import link

    part("connect code (app.link)")
    nc = await link.connect_nats(d)
    part("NATS link (TLS socket, reader and writer tasks, buffers)")
    # As link.connect_stan(), in two steps.
    d.sc = await link.open_stan(d, nc)
    part("STAN session (its tasks, heartbeat, ping and PubAck inboxes)")
    await link.subscribe(d, d.sc)
    part("its 2 durable subscriptions (cfg, releases)")
    link = None
    device._unload(device._CONNECT_MODULES)
    d.on_session(False)
    part("connected: connect code unloaded")
    for _ in range(3):
        d.buf.push(1764583200, 2137)
    t = asyncio.create_task(d._sender())
    while len(d.buf):
        await asyncio.sleep_ms(20)
    part("sender task, 3 readings sent")
    # What a reading costs the collector: bytes allocated per reading sent
    # (every task included: sampler, sender, the link's reader and writer),
    # and how long one collection of this heap takes.
    import time

    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for _ in range(5):
        d.buf.push(1764583200, 2137)
    while len(d.buf):
        await asyncio.sleep_ms(20)
    per = (gc.mem_alloc() - a) // 5
    gc.enable()
    t0 = time.ticks_us()
    gc.collect()
    print("ALLOC %d %d" % (per, time.ticks_diff(time.ticks_us(), t0)))
    t2 = asyncio.create_task(d._status_loop())
    d.changed()
    await asyncio.sleep_ms(300)
    part("status task, one status sent")
    from app import release  # noqa: F401

    part("release decision (app.release, rollout)")
    del release
    device._unload(device._DECISION_MODULES)
    part("release decision done: its code unloaded")
    # A release to install: the device closes its link first (app.closing).
    from app import closing

    part("closing code (app.closing)")
    await closing.close_link(d, nc, (t, t2))


async def main():
    await online()
    part("link closed (STAN session, NATS link, sender and status tasks)")
    device._unload(device._LINK_MODULES)
    part("link code unloaded (%s)" % ", ".join(device._LINK_MODULES))
    from app import install, ota  # noqa: F401

    part("OTA install code (app.install, app.ota, bundle, http_get)")
    import ed25519  # noqa: F401

    part("ed25519 + sha512")
    print("TOTAL %d" % _last[0])
    sys.exit(0)


asyncio.run(main())
