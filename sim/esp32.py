# Stand-in for `esp32`: the chip sensor, and the partition table.
#
# By default the simulated board has no OTA app partitions (Partition.find
# returns nothing): it updates application bundles only. A flash directory
# holding `partitions.json` is a board with ota_0/ota_1: images are written
# to `ota_0.bin`/`ota_1.bin` there, and sim/board.py plays the bootloader
# (boot partition, rollback of an image that never marked itself valid).
import json

import sensor_model

TABLE = "partitions.json"
SIZE = 0x180000  # 1.5 MiB app partitions, as on a 4 MB board with OTA
BLOCK = 4096


def mcu_temperature():
    return int(sensor_model.temperature() + 19)  # the die runs warmer than the room


def _table():
    try:
        with open(TABLE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _save(t):
    with open(TABLE, "w") as f:
        json.dump(t, f)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id):
        t = _table()
        if t is None:
            raise OSError("no such partition")
        label = t["running"] if id == Partition.RUNNING else t["boot"] if id == Partition.BOOT \
            else id
        if label not in ("ota_0", "ota_1"):
            raise OSError("no such partition")
        self.label = label

    @staticmethod
    def find(type=0, subtype=255, label=None):
        if _table() is None:
            return []
        return [Partition(x) for x in ("ota_0", "ota_1") if label in (None, x)]

    def info(self):
        n = int(self.label[-1])
        return (0, 0x10 + n, 0x10000 + n * SIZE, SIZE, self.label, False)

    def get_next_update(self):
        return Partition("ota_1" if self.label == "ota_0" else "ota_0")

    def writeblocks(self, block, buf, offset=None):
        name = self.label + ".bin"
        try:
            f = open(name, "r+b")
        except OSError:
            f = open(name, "w+b")
        with f:
            f.seek(block * BLOCK + (offset or 0))
            f.write(buf)

    def ioctl(self, op, arg):
        if op == 6:  # erase a block (in pieces: on a board this is C, not heap)
            ff = b"\xff" * 256
            for off in range(0, BLOCK, 256):
                self.writeblocks(arg, ff, off)
            return 0
        if op == 4:  # block count
            return SIZE // BLOCK
        if op == 5:  # block size
            return BLOCK
        return None

    def readblocks(self, block, buf, offset=None):
        with open(self.label + ".bin", "rb") as f:
            f.seek(block * BLOCK + (offset or 0))
            f.readinto(buf)

    def set_boot(self):
        t = _table()
        t["boot"] = self.label
        t["verified"] = False  # the new image must mark itself valid
        _save(t)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        t = _table()
        if t is not None:
            t["verified"] = True
            t["previous"] = None
            _save(t)


def bootloader():
    """What the ROM bootloader does at reset (called by sim/board.py)."""
    t = _table()
    if t is None:
        return
    if t["boot"] != t["running"]:
        # A new image: boot it once, pending verification.
        t["previous"], t["running"] = t["running"], t["boot"]
    elif not t.get("verified", True) and t.get("previous"):
        # It booted before and never marked itself valid: roll back.
        t["boot"] = t["running"] = t["previous"]
        t["previous"] = None
        t["verified"] = True
    _save(t)


def image_boots():
    """False for a written image that starts with b"BAD!": the simulator's way to
    have a MicroPython image that crashes before the app runs."""
    t = _table()
    if t is None:
        return True
    try:
        with open(t["running"] + ".bin", "rb") as f:
            return f.read(4) != b"BAD!"
    except OSError:
        return True  # the factory image, never written here
