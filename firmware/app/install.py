# Installing a release once the link is closed, and checking after the
# reboot that an image installed so booted (app/device.py). Loaded only
# then: most boots of a device never install anything.

import otaboot

from app.device import FAILED_KEY, log


async def install(dev, seq, rel):
    v = rel["version"]  # "downloading" was reported before the link closed
    try:
        from app import ota

        o = ota.Ota(dev.id, dev.cfg)
        if rel.get("kind") == "image":
            await o.install_image(rel)  # the bootloader switches partitions
        else:
            otaboot.begin_trial(await o.install(rel), v)
    except Exception as e:  # noqa: BLE001 - not acked: the server redelivers it
        import sys

        sys.print_exception(e)
        dev.set_ota("failed", v, _reason(e))
        failed = otaboot.state().get(FAILED_KEY) or []
        if seq not in failed:
            otaboot.put(FAILED_KEY, (failed + [seq])[-4:])  # max_inflight releases
        return
    dev.set_ota("rebooting", v)


def check_image(dev, trial):
    """A MicroPython image installed before the last reset (``trial``, from
    ota.json): did it boot?"""
    from hal import image

    if image.running_label() == trial["label"]:
        image.mark_valid()
        otaboot.put("image", trial["version"])
        if otaboot.current["frozen"]:
            # The new image's frozen app runs instead of an older slot's bundle.
            otaboot.put("app", "frozen")
        dev.image = trial["version"]
        dev.ota_state = {"state": "installed", "version": trial["version"], "reason": ""}
        log("stanfleet: image healthy version=%s" % trial["version"])
    else:  # the bootloader went back to the old partition
        dev.ota_state = {"state": "rolled_back", "version": trial["version"],
                         "reason": "image did not boot"}
        otaboot.record("rolled_back", trial["version"], "image did not boot")
    otaboot.put("image_trial", None)


def _reason(e):
    """What went wrong, for a person: OSError alone says just "20"."""
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        import errno

        return "I/O error %s" % errno.errorcode.get(e.args[0], e.args[0])
    return str(e) or repr(e)
