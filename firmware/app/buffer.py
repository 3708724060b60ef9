# Readings waiting for their PubAck. Bounded: when full, the oldest reading
# is dropped and counted, so the device never runs out of memory offline.
#
# One ring of fixed-size records, allocated once at boot: a reading is its
# time, its temperature in hundredths of a degree and the number of the guid
# it was first sent under (0: not sent yet), 10 bytes. Kept as objects (a
# list, the JSON payload as bytes and the guid as a str per reading) it was
# about 150 bytes of heap on a 32-bit build, so 200 readings buffered during
# an outage took some 30 KB of an ESP32's 56 KB heap, in small blocks. Here
# push() allocates nothing; the payload is made when the reading is sent.

import asyncio
import struct

from micropython import const

_FMT = "<IhI"  # seconds since the epoch, centi-degrees, guid number
_REC = const(10)


class Buffer:
    def __init__(self, size):
        self.size = size
        self.ring = bytearray(size * _REC)
        self.first = 0  # record index of the oldest reading
        self.n = 0
        self.dropped = 0
        self.sending = False  # the oldest reading's PubAck is awaited: never dropped
        self.ev = asyncio.Event()

    def _pos(self, i):
        return (self.first + i) % self.size * _REC

    def push(self, secs, centi):
        if self.n >= self.size:
            if self.sending and self.n > 1:
                # Drop the second oldest: move the one in flight into its place.
                r, a, b = self.ring, self._pos(0), self._pos(1)
                for k in range(_REC):
                    r[b + k] = r[a + k]
            self.first = (self.first + 1) % self.size
            self.n -= 1
            self.dropped += 1
        struct.pack_into(_FMT, self.ring, self._pos(self.n), secs, centi, 0)
        self.n += 1
        self.ev.set()

    def head(self):
        """(secs, centi, guid number) of the oldest reading, or None."""
        return struct.unpack_from(_FMT, self.ring, self._pos(0)) if self.n else None

    def set_guid(self, number):
        """The oldest reading is sent under guid ``number`` (kept across retries)."""
        struct.pack_into("<I", self.ring, self._pos(0) + 6, number)

    def sent(self):
        """The oldest reading has its PubAck (or is given up): forget it."""
        if self.n:
            self.first = (self.first + 1) % self.size
            self.n -= 1
        self.sending = False

    def __len__(self):
        return self.n
