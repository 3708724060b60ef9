# Stand-in for the ESP32's `machine` module on the unix port.
import os
import sys
import time

REBOOT_EXIT = 75  # the fleet runner restarts a device that exits with this

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def unique_id():
    from binascii import unhexlify

    uid = os.getenv("SIM_UID") or "00000001"
    if len(uid) % 2:
        uid = "0" + uid
    return unhexlify(uid)


def reset():
    sys.exit(REBOOT_EXIT)


def soft_reset():
    sys.exit(REBOOT_EXIT)


def reset_cause():
    return int(os.getenv("SIM_RESET_CAUSE") or PWRON_RESET)


def freq(*args):
    return 240000000


def idle():
    pass


class WDT:
    """Records feeds. The process is the board: a hung device is noticed and
    restarted by the fleet runner, not by this timer."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.fed = time.ticks_ms()

    def feed(self):
        self.fed = time.ticks_ms()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1

    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self._v = value or 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = v

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0


class RTC:
    def datetime(self, dt=None):
        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
