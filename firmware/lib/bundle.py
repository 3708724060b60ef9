# Application bundle: the format a release is shipped in (docs/device.md).
#
#   SFB1 <manifest length> <signature length>\n
#   {"version": "1.2.0", "files": [[name, size, sha256hex], ...]}
#   <hex ed25519 signature of the manifest, or nothing>
#   <the files' bytes, in manifest order>
#
# A device unpacks it while it downloads, a chunk at a time, so RAM use does
# not grow with the bundle. The lengths up front let it read the manifest
# into one buffer of the right size: reading a line of unknown length grows
# a copy per network chunk and fragments a small heap.
#
# Shared by the firmware (unpack) and the release
# manager (pack); MicroPython and CPython alike.

import hashlib
import json
import os
from binascii import hexlify

MAGIC = b"SFB1"
MAX_MANIFEST = 8192  # a manifest longer than this is refused before it fills the heap
MAX_SIG = 256
CHUNK = 512
MANIFEST = "manifest.json"  # written last into a slot: a slot without it is incomplete


class BundleError(Exception):
    pass


def _hex(digest):
    return hexlify(digest).decode()


def check_name(name):
    """A file name inside a slot: relative, no '..', a safe alphabet."""
    if not isinstance(name, str) or not name or name[0] == "/" or len(name) > 96:
        raise BundleError("bad file name %r" % (name,))
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise BundleError("bad file name %r" % (name,))
    for ch in name:
        if not (ch.isalpha() or ch.isdigit() or ch in "._-/"):
            raise BundleError("bad file name %r" % (name,))
    return name


def parse_manifest(line):
    """The manifest dict from its JSON line; BundleError if it is not one."""
    try:
        m = json.loads(line)
        version = m["version"]
        files = m["files"]
    except (ValueError, KeyError, TypeError):
        raise BundleError("manifest is not valid")
    if not isinstance(version, str) or not isinstance(files, list):
        raise BundleError("manifest is not valid")
    for f in files:
        if not isinstance(f, list) or len(f) != 3:
            raise BundleError("manifest file entry is not [name, size, sha256]")
        check_name(f[0])
        if not isinstance(f[1], int) or f[1] < 0 or not isinstance(f[2], str):
            raise BundleError("manifest file entry %r is not valid" % (f[0],))
    return m


def pack(version, files, sign=None):
    """The bundle bytes for ``files`` ([(name, bytes)]); ``sign(manifest_line)``
    returns a signature (bytes) when releases are signed."""
    entries = []
    for name, data in files:
        check_name(name)
        entries.append([name, len(data), _hex(hashlib.sha256(data).digest())])
    line = json.dumps({"version": version, "files": entries}).encode()
    sig = _hex(sign(line)).encode() if sign else b""
    out = [b"%s %d %d\n" % (MAGIC, len(line), len(sig)), line, sig]
    out.extend(data for _, data in files)
    return b"".join(out)


def _makedirs(dest, rel):
    cur = dest
    for part in rel.split("/"):
        cur += "/" + part
        try:
            os.mkdir(cur)
        except OSError:
            pass  # exists


class _Reader:
    """Reads from an async stream, counting bytes and hashing everything read."""

    def __init__(self, stream, limit):
        self.s = stream
        self.limit = limit
        self.n = 0
        self.h = hashlib.sha256()

    async def read(self, n):
        n = min(n, self.limit - self.n)
        if n <= 0:
            return b""
        b = await self.s.read(n)
        self.n += len(b)
        self.h.update(b)
        return b

    async def line(self, limit=64):
        # Only the short first line: everything longer has its length given.
        b = await self.s.readline()
        self.n += len(b)
        self.h.update(b)
        if self.n > self.limit or len(b) > limit:
            raise BundleError("not a stanfleet bundle")
        if not b.endswith(b"\n"):
            raise BundleError("bundle is truncated")
        return b[:-1]

    async def exact(self, n):
        buf = bytearray(n)  # one allocation of the final size
        i = 0
        while i < n:
            b = await self.read(min(CHUNK, n - i))
            if not b:
                raise BundleError("bundle is truncated")
            buf[i:i + len(b)] = b
            i += len(b)
        return buf


async def unpack(stream, dest, size, sha256, check_sig=None, progress=None):
    """Unpack a bundle of ``size`` bytes from ``stream`` into directory ``dest``.

    Checks the magic, the manifest, each file's size and hash, the total size
    and sha256, and, if ``check_sig(manifest_line, sig_bytes)`` is given, the
    signature. Writes manifest.json last, only when all of that holds. Returns
    the manifest; raises BundleError saying what was wrong.
    """
    r = _Reader(stream, size)
    head = (await r.line()).split()
    try:
        if len(head) != 3 or head[0] != MAGIC:
            raise ValueError
        mlen, slen = int(head[1]), int(head[2])
    except ValueError:
        raise BundleError("not a stanfleet bundle")
    if not 0 < mlen <= MAX_MANIFEST or not 0 <= slen <= MAX_SIG:
        raise BundleError("bundle header is out of range")
    line = await r.exact(mlen)
    sig = await r.exact(slen)
    if check_sig is not None:  # before parsing: an unsigned manifest is not read at all
        if not sig:
            raise BundleError("bundle is not signed; this device installs only signed releases")
        try:
            from binascii import unhexlify

            raw = unhexlify(sig)
        except ValueError:
            raise BundleError("bad signature: not hex")
        if not check_sig(line, raw):
            raise BundleError("bad signature: the manifest is not signed by the release key")
    m = parse_manifest(line)
    line = sig = None
    try:
        os.mkdir(dest)
    except OSError:
        pass  # exists
    for name, fsize, fhash in m["files"]:
        if "/" in name:
            _makedirs(dest, name.rsplit("/", 1)[0])
        h = hashlib.sha256()
        left = fsize
        with open(dest + "/" + name, "wb") as f:
            while left:
                b = await r.read(min(CHUNK, left))
                if not b:
                    raise BundleError("bundle is truncated")
                h.update(b)
                f.write(b)
                left -= len(b)
                if progress:
                    progress(r.n)
        if _hex(h.digest()) != fhash:
            raise BundleError("hash mismatch for %s" % name)
    if r.n != size:
        raise BundleError("bundle size is not %d bytes" % size)
    if _hex(r.h.digest()) != sha256:
        raise BundleError("bundle sha256 mismatch")
    with open(dest + "/" + MANIFEST, "w") as f:
        json.dump(m, f)
    return m


def read_installed(slot_dir):
    """The manifest of an installed slot, or None if the slot is incomplete."""
    try:
        with open(slot_dir + "/" + MANIFEST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
