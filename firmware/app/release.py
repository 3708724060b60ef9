# Release messages: is this one for us? Decided without the install code.
#
# Every device sees every release on devices.releases, and most of them end
# here: not newer than what runs (also the redelivery seen after the reboot
# into it), not in a canary, rolled back before, unreadable. So this module
# is small and imports nothing of the install path; app.ota (bundle,
# http_get, and ed25519 for signed releases: about 10 KB of heap as .mpy
# files) is imported only when a release is to be installed.

import json

import otaboot
import rollout

from app.device import FAILED_KEY, log


class Rejected(Exception):
    """The release can never be installed here: ack it and report why."""


def version_tuple(v):
    try:
        t = tuple(int(p) for p in v.split("."))
    except (AttributeError, ValueError):
        raise Rejected("bad version %r" % (v,))
    if len(t) != 3:
        raise Rejected("bad version %r" % (v,))
    return t


def parse(data):
    try:
        rel = json.loads(data)
    except ValueError:
        raise Rejected("release is not JSON")
    if not isinstance(rel, dict):
        raise Rejected("release is not a JSON object")
    for key, kind in (("version", str), ("url", str), ("size", int), ("sha256", str)):
        if not isinstance(rel.get(key), kind):
            raise Rejected("release has no valid %r" % key)
    version_tuple(rel["version"])
    if rel.get("kind", "bundle") not in ("bundle", "image"):
        raise Rejected("unknown release kind %r" % (rel.get("kind"),))
    return rel


def decide(device_id, data):
    """(release, None) to install, or (None, why) to ack without installing."""
    try:
        rel = parse(data)
    except Rejected as e:
        return None, "rejected: %s" % e
    v = rel["version"]
    st = otaboot.state()
    if rel.get("kind") == "image":
        # MicroPython itself: its version is tracked apart from the app's.
        from hal import image

        if not image.available():
            return None, "rejected: this board has no OTA partition for an image"
        running = st.get("image") or "0.0.0"
    else:
        running = otaboot.current["version"] or "0.0.0"
    if version_tuple(v) <= version_tuple(running):
        return None, "%s is not newer than the running %s" % (v, running)
    last = st.get("last") or {}
    if last.get("state") == "rolled_back" and last.get("version") == v:
        return None, "%s was rolled back here" % v
    if not rollout.selected(device_id, rel.get("rollout")):
        return None, "not in the %s%% canary" % rel.get("rollout")
    return rel, None


async def handle(dev, msg):
    """A message on devices.releases: ack it, leave it for the reboot, or
    hand it to Device.run() to install once the link is closed."""
    rel, why = decide(dev.id, msg.data)
    if rel is None:
        log("stanfleet: release acked seq=%d %s" % (msg.sequence, why))
        if why.startswith("rejected"):
            dev.set_ota("rejected", None, why)
        await dev.sc.ack(msg)
        return
    if dev.reboot_ev.is_set():
        # An install is under way (or done) and the board resets next: a
        # redelivery or a newer release must not write the slot again. Not
        # acked: it comes again after the reboot, to the new version.
        log("stanfleet: release seq=%d %s waits for the reboot" % (msg.sequence, rel["version"]))
        return
    failed = otaboot.state().get(FAILED_KEY) or []
    if msg.sequence in failed:
        failed.remove(msg.sequence)
        otaboot.put(FAILED_KEY, failed or None)
        log(
            "stanfleet: release seq=%d %s failed in the last boot, retried when "
            "redelivered" % (msg.sequence, rel["version"])
        )
        return
    # Not here: this runs in the STAN session's delivery task, which closing
    # the session cancels. run() closes the link, then installs.
    log(
        "stanfleet: release seq=%d %s to install, closing the link" % (msg.sequence, rel["version"])
    )
    dev.to_install = (msg.sequence, rel)
    dev.reboot_ev.set()
