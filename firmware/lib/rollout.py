# Which devices take part in a staged (canary) rollout.
#
# A release message may carry "rollout": PCT (1..100). A device installs it
# only if its bucket, derived from its ID alone, is below PCT, so the same
# devices are chosen every time and raising PCT (release promote) only adds
# devices. Shared by the firmware and the release manager, which must agree.
# MicroPython and CPython alike.

import hashlib


def bucket(device_id):
    """0..99, stable for a device ID."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return (digest[0] << 8 | digest[1]) % 100


def selected(device_id, percent):
    """True if a device takes part in a rollout to `percent` of the fleet."""
    if percent is None or percent >= 100:
        return True
    return bucket(device_id) < percent
