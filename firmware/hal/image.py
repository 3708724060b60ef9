# Full MicroPython image updates, into the ESP32's OTA app partitions
# (boards whose partition table has ota_0/ota_1). Application bundles go to
# A/B directories instead (app/ota.py); this is for MicroPython itself.
#
# The image is written block by block into the partition that is not
# running, checked against its sha256, and made the boot partition. With the
# bootloader's rollback enabled, an image that does not mark itself valid
# (mark_valid(), once the app reached the server) is undone at the next reset.

import hashlib
from binascii import hexlify

BLOCK = 4096  # flash erase block
CHUNK = 512  # divides BLOCK


class ImageError(Exception):
    pass


def _running():
    import esp32

    return esp32.Partition(esp32.Partition.RUNNING)


def running_label():
    try:
        return _running().info()[4]
    except (ImportError, OSError, AttributeError):
        return None


def available():
    """True if this board has a partition to update into."""
    try:
        return _running().get_next_update() is not None
    except (ImportError, OSError, AttributeError):
        return False


async def write(stream, size, sha256):
    """Stream ``size`` bytes into the next OTA partition and make it the boot
    partition; returns its label. Raises ImageError before set_boot if the
    image is too large, short, or its hash is wrong."""
    part = _running().get_next_update()
    info = part.info()
    if size > info[3]:
        raise ImageError("image is %d bytes, partition %s holds %d" % (size, info[4], info[3]))
    # 512-byte pieces with the extended block interface (erase a block, then
    # write at offsets): a whole 4 KB buffer is hard to find in a busy heap.
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    h = hashlib.sha256()
    pos = 0
    while pos < size:
        if pos % BLOCK == 0:
            part.ioctl(6, pos // BLOCK)  # erase the block
        n = min(CHUNK, size - pos)
        i = 0
        while i < n:
            b = await stream.read(n - i)
            if not b:
                raise ImageError("image is truncated")
            mv[i:i + len(b)] = b
            i += len(b)
        h.update(mv[:n])
        part.writeblocks(pos // BLOCK, mv[:n], pos % BLOCK)
        pos += n
    if hexlify(h.digest()).decode() != sha256:
        raise ImageError("image sha256 mismatch")
    part.set_boot()
    return info[4]


def mark_valid():
    """Tell the bootloader the running image works (no-op without rollback)."""
    try:
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()
    except (ImportError, OSError, AttributeError):
        pass
