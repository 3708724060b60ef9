"""Release signing: keys (stanfleet.security.signing), signed builds, and the device's
check of them (firmware/lib/bundle.py with firmware/lib/ed25519.py, run here
on CPython; tests/sim/test_e2e_signed.py runs it on the unix port)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from stanfleet.errors import CommandError
from stanfleet.fleet import bundle_check
from stanfleet.fleet.bundle_build import build_bundle
from stanfleet.fleet.firmware_code import FIRMWARE_DIR, load
from stanfleet.fleet.provision import _BytesStream
from stanfleet.security import signing

bundle = load("bundle")
ed25519 = load("ed25519")
FILES = [("nats.mpy", b"N" * 700), ("app/main.mpy", b"M" * 300)]


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stanfleet.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def device_unpack(data: bytes, dest, key_hex: str, sha=None):
    """What a device with release_key does with a downloaded bundle."""
    key = bytes.fromhex(key_hex)
    return asyncio.run(bundle.unpack(
        _BytesStream(data), str(dest), len(data), sha or hashlib.sha256(data).hexdigest(),
        lambda line, sig: ed25519.verify(key, line, sig)))


# ---- keys ------------------------------------------------------------------------

def test_keygen_writes_a_private_0600_and_a_hex_public_key(tmp_path):
    pair = signing.keygen(tmp_path / "security")
    assert pair.private_path == tmp_path / "security" / "release-signing.key"
    assert stat.S_IMODE(os.stat(pair.private_path).st_mode) == 0o600
    assert pair.private_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pair.public_path.read_text() == pair.public_hex + "\n"
    signer = signing.load_signer(pair.private_path)
    assert signer.public_hex == pair.public_hex and len(pair.public_hex) == 64


def test_keygen_never_overwrites(tmp_path):
    first = signing.keygen(tmp_path)
    key = first.private_path.read_bytes()
    with pytest.raises(CommandError, match="already exists"):
        signing.keygen(tmp_path)
    first.private_path.unlink()  # a lone .pub is a key devices trust too
    with pytest.raises(CommandError, match="already exists"):
        signing.keygen(tmp_path)
    assert not first.private_path.exists() and key


def test_sign_verify_round_trip_with_cryptography_and_the_firmware(tmp_path):
    signer = signing.load_signer(signing.keygen(tmp_path).private_path)
    msg = b'{"version": "1.2.0", "files": []}'
    sig = signer.sign(msg)
    pub = bytes.fromhex(signer.public_hex)
    assert signing.verify(signer.public_hex, msg, sig)
    assert ed25519.verify(pub, msg, sig)
    for bad_msg, bad_sig in ((msg + b" ", sig), (msg, sig[:-1] + bytes([sig[-1] ^ 1]))):
        assert not signing.verify(signer.public_hex, bad_msg, bad_sig)
        assert not ed25519.verify(pub, bad_msg, bad_sig)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert not signing.verify(other.hex(), msg, sig) and not ed25519.verify(other, msg, sig)


def test_private_key_files_raw_or_pem_and_never_world_readable(tmp_path):
    raw = tmp_path / "raw.key"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(range(32)))
    os.close(fd)
    assert len(signing.load_signer(raw).public_hex) == 64
    os.chmod(raw, 0o644)
    with pytest.raises(CommandError, match="chmod 600"):
        signing.load_signer(raw)
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    os.chmod(junk, 0o600)
    with pytest.raises(CommandError, match="not an ed25519 private key"):
        signing.load_signer(junk)
    with pytest.raises(CommandError, match="release keygen"):
        signing.load_signer(tmp_path / "missing.key")


def test_public_key_files_for_devices(tmp_path):
    pair = signing.keygen(tmp_path)
    assert signing.read_public_key(pair.public_path) == pair.public_hex
    pem = tmp_path / "pub.pem"
    pem.write_bytes(signing.load_signer(pair.private_path)._key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert signing.read_public_key(pem) == pair.public_hex
    with pytest.raises(CommandError, match="is a private key"):
        signing.read_public_key(pair.private_path)
    assert signing.check_public_hex(pair.public_hex.upper() + "\n") == pair.public_hex
    with pytest.raises(CommandError, match="64 hex"):
        signing.check_public_hex("abcd")


# ---- what a device with a release key accepts ------------------------------------

@pytest.fixture
def keys(tmp_path):
    fleet = signing.load_signer(signing.keygen(tmp_path / "fleet").private_path)
    attacker = signing.load_signer(signing.keygen(tmp_path / "attacker").private_path)
    return fleet, attacker


def tampered(fleet, attacker, files, victim: str, version: str = "1.2.0") -> dict[str, bytes]:
    """What an attacker can make of a release signed by ``fleet``: ``victim``
    (one of ``files``) replaced by its own code. Built with bundle.pack only,
    so it holds for any layout of the bundle's header."""
    lines = []

    def record(line):
        lines.append(bytes(line))
        return fleet.sign(line)
    genuine = bundle.pack(version, files, record)
    genuine_sig = fleet.sign(lines[0])
    evil = [(n, b"\x4d\x06" + b"evil" * 50 if n == victim else d) for n, d in files]
    data = dict(files)[victim]
    at = genuine.index(data) + len(data) // 2
    hex_sig = genuine_sig.hex().encode()
    return {
        "genuine": genuine,
        "unsigned": bundle.pack(version, evil),
        "re-signed by the attacker": bundle.pack(version, evil, attacker.sign),
        "manifest edited, signature kept": bundle.pack(version, evil, lambda _: genuine_sig),
        "file bytes changed": genuine[:at] + bytes([genuine[at] ^ 0xFF]) + genuine[at + 1:],
        "signature not hex": genuine.replace(hex_sig, b"zz" + hex_sig[2:], 1),
    }


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "bundle is not signed"),
    ("re-signed by the attacker", "bad signature: the manifest is not signed by the release key"),
    ("manifest edited, signature kept", "bad signature"),
    ("file bytes changed", "hash mismatch for nats.mpy"),
    ("signature not hex", "bad signature: not hex"),
])
def test_tampered_bundles_are_refused(keys, tmp_path, case, reason):
    """Even with the release message's size and sha256 made to match (the
    attacker controls it), as unpack is given the tampered bundle's own hash."""
    data = tampered(*keys, FILES, "nats.mpy")[case]
    with pytest.raises(bundle.BundleError, match=reason):
        device_unpack(data, tmp_path / "slot", keys[0].public_hex)
    assert not (tmp_path / "slot" / bundle.MANIFEST).exists()
    if case != "file bytes changed":  # refused before any file is written
        assert not (tmp_path / "slot" / "nats.mpy").exists()


# ---- stanfleet release keygen / build --------------------------------------------

def test_keygen_and_signed_build_from_the_command_line(tmp_path):
    keys, releases = tmp_path / "security", tmp_path / "releases"
    r = cli("release", "keygen", "--keys", str(keys))
    assert r.returncode == 0, r.stderr
    pub = (keys / "release-signing.pub").read_text().strip()
    assert pub in r.stdout and "never commit" in r.stdout
    r = cli("release", "keygen", "--keys", str(keys))
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr

    r = cli("release", "build", "1.2.0", "--keys", str(keys), "--releases", str(releases))
    assert r.returncode == 0, r.stderr
    assert f"signed with {keys / 'release-signing.key'} (public key {pub})" in r.stdout
    assert bundle_check.is_signed(releases / "1.2.0.bin")
    assert bundle_check.device_check(releases / "1.2.0.bin", pub) == ""
    other = signing.keygen(tmp_path / "other").public_hex
    assert "bad signature" in bundle_check.device_check(releases / "1.2.0.bin", other)
    data = (releases / "1.2.0.bin").read_bytes()
    assert device_unpack(data, tmp_path / "slot", pub)["version"] == "1.2.0"

    r = cli("release", "build", "1.2.1", "--keys", str(keys), "--releases", str(releases),
            "--unsigned")
    assert r.returncode == 0, r.stderr
    assert "unsigned (--unsigned)" in r.stdout
    assert not bundle_check.is_signed(releases / "1.2.1.bin")
    assert "not signed" in bundle_check.device_check(releases / "1.2.1.bin", pub)


def test_build_without_a_key_says_it_is_unsigned(tmp_path):
    r = cli("release", "build", "1.0.0", "--keys", str(tmp_path / "none"),
            "--releases", str(tmp_path / "releases"))
    assert r.returncode == 0, r.stderr
    assert "unsigned (no signing key at" in r.stdout and "release keygen" in r.stdout
    r = cli("release", "build", "1.0.1", "--sign-key", str(tmp_path / "missing.key"),
            "--releases", str(tmp_path / "releases"))
    assert r.returncode == 1 and "no signing key" in r.stderr
    assert not (tmp_path / "releases" / "1.0.1.bin").exists()


def test_build_bundle_with_a_signer(tmp_path):
    signer = signing.load_signer(signing.keygen(tmp_path).private_path)
    info = build_bundle(FIRMWARE_DIR, "2.0.0", tmp_path / "2.0.0.bin", signer.sign)
    assert info["signed"]
    data = (tmp_path / "2.0.0.bin").read_bytes()
    m = device_unpack(data, tmp_path / "slot", signer.public_hex)
    assert {"app/ota.mpy", "ed25519.mpy", "sha512.mpy"} <= {f[0] for f in m["files"]}


def test_provision_takes_the_public_key_file(tmp_path):
    pair = signing.keygen(tmp_path / "security")
    build_bundle(FIRMWARE_DIR, "1.0.0", tmp_path / "1.0.0.bin")
    r = cli("provision", "--out", str(tmp_path / "dev"), "--bundle", str(tmp_path / "1.0.0.bin"),
            "--device-id", "3F45", "--nats", "nats://127.0.0.1:4222",
            "--release-key-file", str(pair.public_path))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "dev" / "config.json").read_text())
    assert cfg["release_key"] == pair.public_hex
    r = cli("provision", "--out", str(tmp_path / "dev2"), "--bundle", str(tmp_path / "1.0.0.bin"),
            "--nats", "nats://127.0.0.1:4222", "--release-key-file", str(pair.private_path))
    assert r.returncode == 1 and "is a private key" in r.stderr
