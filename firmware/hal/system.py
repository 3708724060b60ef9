# The board itself: identity, clock, reset and watchdog.

import time

import machine


def unique_hex():
    from binascii import hexlify

    return hexlify(machine.unique_id()).decode().upper()


def sync_clock(log):
    """Set the RTC from NTP (a no-op in the simulator, whose clock is the host's)."""
    try:
        import ntptime

        ntptime.settime()
    except Exception as e:  # no NTP: timestamps are off until the next try
        log("stanfleet: ntp failed error=%r" % (e,))


def iso_now():
    return iso(int(time.time()))


def iso(secs):
    """UTC time ``secs`` (the port's epoch, as time.time()) as ISO 8601."""
    t = time.gmtime(secs)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (t[0], t[1], t[2], t[3], t[4], t[5])


def reset():
    machine.reset()


class Watchdog:
    """machine.WDT fed by the event loop: a hung loop resets the board."""

    def __init__(self, timeout_ms):
        self.wdt = machine.WDT(timeout=timeout_ms) if timeout_ms else None
        self.period_ms = max(timeout_ms // 4, 100) if timeout_ms else 0

    async def run(self):
        import asyncio

        while self.wdt:
            self.wdt.feed()
            await asyncio.sleep_ms(self.period_ms)
