# The simulated room: a smooth temperature curve per device, around 21 °C.
import math
import os
import time


def _phase():
    uid = os.getenv("SIM_UID") or "1"
    try:
        return (int(uid, 16) % 628) / 100
    except ValueError:
        return 0.0


_PHASE = _phase()


def temperature():
    t = time.time()
    # A slow daily-like swing, a faster ripple, and a touch of noise.
    base = 21.0 + 2.5 * math.sin(t / 900 + _PHASE) + 0.4 * math.sin(t / 47 + 2 * _PHASE)
    return base + (time.ticks_us() % 100) / 1000


def present():
    """SIM_SENSOR=none simulates a board without its DS18B20."""
    return os.getenv("SIM_SENSOR") != "none"
