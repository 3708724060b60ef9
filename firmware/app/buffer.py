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
#
# A planned reboot (after an install, or to leave a failed one: app/device.py)
# saves the ring to flash and the next boot takes it back, so readings taken
# while the link was closed for the install are sent after it. A crash, the
# watchdog or a power cut still loses what was buffered.

import asyncio
import os
import struct

from micropython import const

_FMT = "<IhI"  # seconds since the epoch, centi-degrees, guid number
_REC = const(10)
SAVED = "buffer.bin"  # at the flash root, for one reboot only
_HDR = "<9sI"  # the saving boot's guid prefix ("%08xr") and last guid number


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

    def save(self, guid_pfx, guid_n):
        """Write the buffered readings for the next boot (just before a reset).
        The guid prefix and number go with them, so a reading sent before the
        reset is sent again under the same guid and stored once."""
        if not self.n:
            return
        with open(SAVED, "wb") as f:
            f.write(struct.pack(_HDR, guid_pfx.encode(), guid_n))
            for i in range(self.n):
                p = self._pos(i)
                f.write(self.ring[p:p + _REC])

    def restore(self):
        """Take back what the last boot saved: (guid prefix, last guid number),
        or None. The file is removed first, so it is never replayed twice."""
        try:
            with open(SAVED, "rb") as f:
                data = f.read()
            os.remove(SAVED)
        except OSError:
            return None
        h = struct.calcsize(_HDR)
        if len(data) < h or (len(data) - h) % _REC:
            return None  # cut short: what was buffered is lost, as without the file
        pfx, last = struct.unpack_from(_HDR, data)
        count = (len(data) - h) // _REC
        skip = max(0, count - self.size)  # a smaller buffer now: the oldest go
        self.dropped += skip
        for i in range(skip, count):
            p, q = self._pos(self.n), h + i * _REC
            self.ring[p:p + _REC] = data[q:q + _REC]
            self.n += 1
        if self.n:
            self.ev.set()
        return pfx.decode(), last
