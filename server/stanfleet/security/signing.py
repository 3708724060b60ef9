"""Release signing keys: an ed25519 key pair that signs each bundle's manifest.

    stanfleet release keygen [--keys DIR]      # DIR/release-signing.key and .pub
    stanfleet release build 1.2.0              # signs with DIR/release-signing.key
    stanfleet provision ... --release-key-file DIR/release-signing.pub

The private key is a PKCS#8 PEM file, mode 0600, next to the broker
credentials (default stanfleet-data/security, which .gitignore keeps out of
git). The public key is 64 hex characters in a file of its own: that is what
a device's config.json carries as "release_key" (firmware/app/ota.py), and a
device that has one installs only bundles whose manifest (firmware/lib/bundle.py)
that key signed. The manifest lists every file's sha256, so signing it covers
the whole bundle.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from ..errors import CommandError

DEFAULT_KEYS_DIR = "stanfleet-data/security"
PRIVATE_NAME = "release-signing.key"
PUBLIC_NAME = "release-signing.pub"
HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class KeyPair:
    private_path: Path
    public_path: Path
    public_hex: str


class Signer:
    """Signs manifest lines with one private key (``sign`` is what
    bundle.pack(sign=) takes)."""

    def __init__(self, key: Ed25519PrivateKey, path: str = ""):
        self._key = key
        self.path = path
        self.public_hex = public_hex(key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def private_path(keys_dir: str | os.PathLike = DEFAULT_KEYS_DIR) -> Path:
    return Path(keys_dir) / PRIVATE_NAME


def keygen(keys_dir: str | os.PathLike = DEFAULT_KEYS_DIR) -> KeyPair:
    """Create DIR/release-signing.key (0600) and DIR/release-signing.pub (hex).
    Never overwrites: a new key would make every device refuse new releases."""
    d = Path(keys_dir)
    priv, pub = d / PRIVATE_NAME, d / PUBLIC_NAME
    for p in (priv, pub):
        if p.exists():
            raise CommandError(f"{p} already exists; not overwriting a release signing key "
                               "(devices trust it: move it away first if you mean to replace it)")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # O_EXCL: two keygens at once cannot both think they made the key.
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    hex_key = public_hex(key.public_key())
    pub.write_text(hex_key + "\n")
    return KeyPair(priv, pub, hex_key)


def load_signer(path: str | os.PathLike) -> Signer:
    """The signer for a private key file: PKCS#8 PEM, or the 32 raw bytes."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"no signing key {p} (create one with: stanfleet release keygen)") \
            from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CommandError(f"{p} can be read by other users: chmod 600 {p}")
    try:
        if raw.startswith(b"-----BEGIN"):
            key = load_pem_private_key(raw, password=None)
        elif len(raw) == 32:
            key = Ed25519PrivateKey.from_private_bytes(raw)
        else:
            raise ValueError("neither PEM nor 32 raw bytes")
    except (ValueError, TypeError) as e:
        raise CommandError(f"{p} is not an ed25519 private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CommandError(f"{p} is not an ed25519 private key")
    return Signer(key, str(p))


def check_public_hex(text: str) -> str:
    """A public key as devices take it: 64 hex characters, lower case."""
    text = text.strip()
    if not HEX_KEY.match(text):
        raise CommandError("a release key is 64 hex characters (an ed25519 public key)")
    return text.lower()


def read_public_key(path: str | os.PathLike) -> str:
    """The hex public key from a file: the .pub keygen writes, or a PEM public key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CommandError(f"no public key file {p}") from None
    if raw.startswith(b"-----BEGIN PUBLIC KEY"):
        try:
            key = load_pem_public_key(raw)
        except ValueError as e:
            raise CommandError(f"{p}: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CommandError(f"{p} is not an ed25519 public key")
        return public_hex(key)
    if b"PRIVATE KEY" in raw:
        raise CommandError(f"{p} is a private key; devices get the public one "
                           f"({PUBLIC_NAME})")
    try:
        return check_public_hex(raw.decode())
    except (UnicodeDecodeError, CommandError):
        raise CommandError(f"{p} does not hold a release public key (64 hex characters)") \
            from None


def verify(public: str, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False
