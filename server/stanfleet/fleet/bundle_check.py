"""What a device would say of a bundle file: would it install it, is it signed.

The release manager checks a bundle it just built with the device's own code
(firmware/lib/bundle.py through `provision.unpack_bytes`), so a bundle that
passes here is one the fleet accepts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..security.signing import check_public_hex, verify
from .firmware_code import load
from .provision import unpack_bytes


def _unpack(path: str | os.PathLike, check_sig) -> str:
    """Unpack a bundle file as a device does, into a scratch directory; the
    reason a device would give for refusing it, or "" if it would install."""
    bundle = load("bundle")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            unpack_bytes(Path(path).read_bytes(), tmp + "/slot", check_sig)
        except bundle.BundleError as e:
            return str(e)
    return ""


def is_signed(path: str | os.PathLike) -> bool:
    """Whether a bundle file carries a signature (by any key)."""
    seen = []
    _unpack(path, lambda line, sig: seen.append(sig) or True)
    return bool(seen)


def device_check(path: str | os.PathLike, public: str) -> str:
    """Why a device holding ``public`` would refuse the bundle, or "" if it installs it."""
    public = check_public_hex(public)
    return _unpack(path, lambda line, sig: verify(public, bytes(line), bytes(sig)))
