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
