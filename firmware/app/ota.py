# Releases: install a new application bundle over the air (docs/device.md).
# Whether a release is to be installed at all is app/release.py's call.
#
# A release message is acked only when it needs nothing more from this
# device: installed (seen again after the reboot into it), not newer than
# what runs, not meant for this device (canary), known bad (rolled back), or
# unreadable. A failed download, a bad hash or signature, or a failed write
# is never acked: the server redelivers it after ack_wait and we try again.
#
# Signed releases: with "release_key" (hex ed25519 public key) in config.json
# the bundle's manifest line must carry that key's signature. It is checked
# before the manifest is parsed or any file written; the manifest holds every
# file's sha256, which bundle.unpack checks as the bytes arrive, so a bundle
# that is unsigned, signed by another key, edited after signing, or whose
# files were changed is refused. The release message's size and sha256 are
# not signed: they only catch a broken download. A release_key that is not a
# valid key fails every install (it never falls back to unsigned).

import gc
import os
import time

import bundle
import http_get
import otaboot


def _rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == 0x4000:  # directory
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class Ota:
    def __init__(self, device_id, cfg):
        self.device_id = device_id
        self.ca = cfg.get("ca")
        key = cfg.get("release_key")  # hex ed25519 public key: releases must be signed
        self.key = None
        if key:
            from binascii import unhexlify

            try:
                self.key = unhexlify(key)
            except (TypeError, ValueError):
                self.key = b""
            if len(self.key) != 32:
                self.key = b""  # still set: installs fail, none goes unchecked

    def _prepare_sig(self):
        """Load ed25519 (and sha512) and make its tables for the key before
        the download: the module and the tables' two 1,152-byte blocks find
        room while the heap is in one piece (the link just closed); in the
        middle of a download, next to the TLS connection, they may not."""
        import ed25519

        ed25519.prepare(self.key)

    def _check_sig(self, line, sig):
        # ed25519 (and sha512) load on the first signed release and stay loaded.
        t0 = time.ticks_ms()
        import ed25519

        t1 = time.ticks_ms()
        # The verify's big integers are garbage a few hundred bytes at a time;
        # collecting every 1 KB keeps them from piling up into the OTA's peak
        # (the link is closed by now, so this is the only thing running).
        old = gc.threshold()
        gc.threshold(1024)
        try:
            ok = ed25519.verify(self.key, line, sig)
        finally:
            gc.threshold(old)
        print("stanfleet: ota signature %s load_ms=%d verify_ms=%d"
              % ("ok" if ok else "bad", time.ticks_diff(t1, t0),
                 time.ticks_diff(time.ticks_ms(), t1)))
        return ok

    async def _download(self, rel):
        """The artifact's body as a stream, once its status and length are right."""
        status, length, stream = await http_get.get(rel["url"], self.ca)
        if status != 200 or (length is not None and length != rel["size"]):
            stream.close()
            if status != 200:
                raise http_get.HttpError("download failed: HTTP %d" % status)
            raise http_get.HttpError("size is %d bytes, release says %d" % (length, rel["size"]))
        return stream

    async def install(self, rel):
        """Download and unpack into the inactive slot; returns the slot. Raises on failure."""
        if self.key == b"":
            raise bundle.BundleError("release_key in config.json is not a 64-hex-digit "
                                     "ed25519 public key; no release can be checked")
        slot = otaboot.inactive()
        d = otaboot.slot_dir(slot)
        _rmtree(d)  # whatever was there (an old version, a half download) goes; unpack remakes it
        if self.key:
            self._prepare_sig()
        stream = await self._download(rel)
        try:
            m = await bundle.unpack(stream, d, rel["size"], rel["sha256"],
                                    self._check_sig if self.key is not None else None)
        finally:
            stream.close()
        if m["version"] != rel["version"]:
            _rmtree(d)
            raise bundle.BundleError("bundle holds %s, release says %s"
                                     % (m["version"], rel["version"]))
        return slot

    async def install_image(self, rel):
        """Write a MicroPython image into the next OTA partition; returns its label.
        With a release key the release must carry "sig": the key's signature of
        "stanfleet-image <version> <sha256>", so the hash checked is the signed one."""
        from hal import image

        if self.key is not None:
            from binascii import unhexlify

            if self.key:
                self._prepare_sig()
            stmt = ("stanfleet-image %s %s" % (rel["version"], rel["sha256"])).encode()
            try:
                sig = unhexlify(rel.get("sig") or "")
            except (TypeError, ValueError):
                sig = b""
            if not self.key or not sig or not self._check_sig(stmt, sig):
                raise image.ImageError("bad signature: the image is not signed by the release key")
            stmt = sig = None
            # The verify leaves kilobytes of big-integer garbage: free it before
            # the HTTPS connection and its buffers take their place in the heap.
            gc.collect()
        stream = await self._download(rel)
        try:
            label = await image.write(stream, rel["size"], rel["sha256"])
        finally:
            stream.close()
        otaboot.put("image_trial", {"version": rel["version"], "label": label})
        return label
