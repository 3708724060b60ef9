# Closing the link before a reset (Device._online): the last status, the
# STAN session's goodbye, the NATS link. Once per boot at most, so loaded
# only then: as a .mpy file about 1 KB less on a connected device's heap,
# and not app.link's 2 KB at the connected device's highest point (a
# release message, its decision and the last status all live).

import asyncio
import gc

from app.device import log


async def close_link(dev, nc, work):
    """Stop the sender and status tasks (``work``), send the last status,
    close the STAN session (durables and unacked releases stay on the
    server), then the NATS link."""
    for t in work:
        t.cancel()
    sc = dev.sc
    if dev.to_install:
        # The last status before the link closes: the fleet sees the install
        # under way, not just a device gone quiet.
        dev.set_ota("downloading", dev.to_install[1]["version"])
        try:
            await asyncio.wait_for(sc.publish(
                "devices.%s.status" % dev.id, dev.status(), sc.new_guid()), 3)
        except Exception as e:  # noqa: BLE001 - installing anyway
            log("stanfleet: status not sent error=%r" % (e,))
    dev.online = False
    # Everything is still live here, so this is the heap's high point of an
    # OTA: start it without garbage (the release message's, and the cancelled
    # sender's and status tasks' once they have ended).
    await asyncio.sleep_ms(0)
    gc.collect()
    # Say goodbye so the server frees the client ID at once (and hands the
    # unacked releases to the next session).
    try:
        await asyncio.wait_for(sc.close(), 3)
    except Exception:  # noqa: BLE001 - resetting or installing anyway
        pass
    try:
        await asyncio.wait_for(nc.close(), 2)
    except Exception:  # noqa: BLE001
        pass
    dev.sc = sc = None
    # The link's cancelled tasks end (and let go of it) when they next run.
    await asyncio.sleep_ms(0)
    await asyncio.sleep_ms(0)
