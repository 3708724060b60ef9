# A/B slot bootloader (docs/device.md "ota.json"). Lives at the root of the
# flash and is never replaced over the air, so its small API is the contract
# between every firmware version and the boot: select() at boot, then
# mark_good(), begin_trial() and record() from the running app.
#
# Every write goes to a new file that is then renamed over ota.json, so a
# power cut leaves either the old state or the new one, never half of one.
#
# A board image may carry the app frozen (firmware/manifest.py; its
# frozen_app module names the version). Frozen code runs from flash, so it
# is the app to run whenever it is the newest the board has: at first boot,
# and after an image update (ota.json "app": "frozen"). A bundle installed
# over the air is newer: its slot goes first on sys.path, where its modules
# shadow every frozen one, and ota.json says "app": "slot" once it is good.

import json
import os
import sys

STATE = "ota.json"
SLOTS = ("a", "b")
MAX_TRIAL_BOOTS = 3

# Set by select(): {"slot": "a", "dir": "slots/a", "version": "1.0.0", "trial": False,
# "frozen": False}; with the frozen app, "dir" is None and "version" the image's app.
current = None


def frozen_version():
    """The version of the app frozen into this image, or None."""
    try:
        import frozen_app

        return frozen_app.VERSION
    except ImportError:
        return None


def _read():
    try:
        with open(STATE) as f:
            st = json.load(f)
        if isinstance(st, dict):
            return st
    except (OSError, ValueError):
        pass
    return {}


def _write(st):
    tmp = STATE + ".new"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.rename(tmp, STATE)


def slot_dir(slot):
    return "slots/" + slot


def version_of(slot):
    """The version installed in a slot, or None if the slot is not complete."""
    try:
        with open(slot_dir(slot) + "/manifest.json") as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def state():
    return _read()


def select():
    """Choose the slot to run, count a trial boot, roll back a failed trial."""
    global current
    st = _read()
    trial = st.get("trial")
    if trial:
        trial["boots"] = trial.get("boots", 0) + 1
        ver = version_of(trial.get("slot"))
        if ver is None or trial["boots"] > MAX_TRIAL_BOOTS:
            st["last"] = {"state": "rolled_back", "version": trial.get("version"),
                          "reason": "not healthy after %d boots" % (trial["boots"] - 1)}
            st["trial"] = None
            trial = None
        _write(st)
    frozen = frozen_version()
    if trial:
        slot, is_trial = trial["slot"], True
    else:
        slot, is_trial = st.get("active"), False
        if slot not in SLOTS or version_of(slot) is None:
            # Unknown or broken active slot: run whichever slot is complete.
            good = [s for s in SLOTS if version_of(s) is not None]
            if not good and frozen is None:
                raise OSError("no bootable slot")
            slot = good[0] if good else None
            if st.get("active") != slot:
                st["active"] = slot
                _write(st)
    # An image on trial runs its own frozen app: that is what is being tried.
    if frozen is not None and not is_trial and (
            slot is None or st.get("app") != "slot" or st.get("image_trial")):
        current = {"slot": slot, "dir": None, "version": frozen, "trial": False, "frozen": True}
    else:
        d = slot_dir(slot)
        if d not in sys.path:
            sys.path.insert(0, d)
        current = {"slot": slot, "dir": d, "version": version_of(slot), "trial": is_trial,
                   "frozen": False}
    print("stanfleet: boot slot=%s version=%s trial=%s frozen=%s"
          % (slot, current["version"], is_trial, current["frozen"]))
    return current


def inactive():
    return SLOTS[1] if current["slot"] == SLOTS[0] else SLOTS[0]


def mark_good():
    """The running trial is healthy: make it the active slot. True if it was a trial."""
    if not current or not current["trial"]:
        return False
    st = _read()
    st["active"] = current["slot"]
    st["app"] = "slot"  # newer than the frozen app: it shadows it from now on
    st["trial"] = None
    st["last"] = {"state": "installed", "version": current["version"], "reason": ""}
    _write(st)
    current["trial"] = False
    return True


def begin_trial(slot, version):
    """Boot ``slot`` next time, on trial."""
    st = _read()
    st["trial"] = {"slot": slot, "version": version, "boots": 0}
    _write(st)


def record(state_name, version, reason=""):
    """Remember the last OTA outcome across reboots (reported in status)."""
    st = _read()
    st["last"] = {"state": state_name, "version": version, "reason": reason}
    _write(st)


def put(key, value):
    """Keep another piece of OTA state in ota.json (e.g. a MicroPython image update)."""
    st = _read()
    st[key] = value
    _write(st)
