"""The bundle format (firmware/lib/bundle.py), its build and device provisioning.

The same module unpacks on the device; here it runs on CPython over an
in-memory stream, and on the unix port in the simulator's end-to-end tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from stanfleet.errors import CommandError
from stanfleet.fleet.bundle_build import build_bundle
from stanfleet.fleet.firmware_code import FIRMWARE_DIR, load
from stanfleet.fleet.provision import _BytesStream, make_device_fs

bundle = load("bundle")

FILES = [("nats.mpy", b"N" * 1500), ("app/device.mpy", b"D" * 700), ("app/x/y.mpy", b"")]


def unpack(data: bytes, dest, size=None, sha=None, check_sig=None):
    return asyncio.run(bundle.unpack(
        _BytesStream(data), str(dest), len(data) if size is None else size,
        hashlib.sha256(data).hexdigest() if sha is None else sha, check_sig))


def test_round_trip(tmp_path):
    data = bundle.pack("1.2.0", FILES)
    m = unpack(data, tmp_path)
    assert m["version"] == "1.2.0"
    for name, content in FILES:
        assert (tmp_path / name).read_bytes() == content
    assert bundle.read_installed(str(tmp_path))["version"] == "1.2.0"


@pytest.mark.parametrize("damage, error", [
    (lambda d: d[:-1], "truncated|size"),
    (lambda d: d[:40], "truncated"),
    (lambda d: d[:10], "not a stanfleet bundle|truncated"),
    (lambda d: d.replace(b" ", b" 99999", 1), "out of range"),
    (lambda d: d[:-5] + b"XXXXX", "hash mismatch"),
    (lambda d: b"SFB2" + d[4:], "not a stanfleet bundle"),
    (lambda d: d.replace(b'"version"', b'"versiom"', 1), "manifest is not valid"),
    (lambda d: b"", "truncated|not a stanfleet bundle"),
])
def test_damaged_bundle_is_refused_and_slot_stays_incomplete(tmp_path, damage, error):
    data = damage(bundle.pack("1.2.0", FILES))
    with pytest.raises(bundle.BundleError, match=error):
        unpack(data, tmp_path)
    assert bundle.read_installed(str(tmp_path)) is None


def test_wrong_release_hash_or_size_is_refused(tmp_path):
    data = bundle.pack("1.2.0", FILES)
    with pytest.raises(bundle.BundleError, match="sha256"):
        unpack(data, tmp_path / "a", sha="0" * 64)
    with pytest.raises(bundle.BundleError, match="size"):
        unpack(data + b"extra", tmp_path / "b", size=len(data) + 5,
               sha=hashlib.sha256(data + b"extra").hexdigest())
    assert bundle.read_installed(str(tmp_path / "a")) is None


@pytest.mark.parametrize("name", ["../evil.mpy", "/etc/passwd", "a//b.mpy", "a/./b", "x y.mpy",
                                  "", "a" * 200])
def test_unsafe_file_names_are_refused(name):
    with pytest.raises(bundle.BundleError, match="bad file name"):
        bundle.pack("1.0.0", [(name, b"x")])
    line = json.dumps({"version": "1.0.0", "files": [[name, 1, "00"]]})
    with pytest.raises(bundle.BundleError):
        bundle.parse_manifest(line)


def test_signature_is_checked_before_any_file_is_written(tmp_path):
    data = bundle.pack("1.2.0", FILES, sign=lambda line: hashlib.sha256(b"k" + line).digest())

    def good(line, sig):
        return sig == hashlib.sha256(b"k" + line).digest()

    unpack(data, tmp_path / "ok", check_sig=good)
    with pytest.raises(bundle.BundleError, match="bad signature"):
        unpack(data, tmp_path / "bad", check_sig=lambda line, sig: False)
    assert not (tmp_path / "bad" / "nats.mpy").exists()
    unsigned = bundle.pack("1.2.0", FILES)
    with pytest.raises(bundle.BundleError, match="not signed"):
        unpack(unsigned, tmp_path / "unsigned", check_sig=good)


def test_build_compiles_every_firmware_module(tmp_path):
    info = build_bundle(FIRMWARE_DIR, "1.0.0", tmp_path / "1.0.0.bin")
    data = (tmp_path / "1.0.0.bin").read_bytes()
    assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    m = unpack(data, tmp_path / "slot")
    names = {f[0] for f in m["files"]}
    assert {"nats.mpy", "stan.mpy", "pb.mpy", "bundle.mpy", "app/device.mpy", "hal/net.mpy"} <= names
    # .mpy files start with the "M" magic byte; no source is shipped.
    assert all((tmp_path / "slot" / n).read_bytes()[:1] == b"M" for n in names)


def test_provision_makes_a_bootable_tree(tmp_path):
    build_bundle(FIRMWARE_DIR, "1.0.0", tmp_path / "b.bin")
    out = tmp_path / "dev"
    make_device_fs(out, tmp_path / "b.bin", {"device_id": "3F45", "nats": ["nats://h:4222"]},
                   ca=b"\x30\x00")
    for name in ("boot.py", "main.py", "otaboot.mpy", "ota.json", "config.json", "ca.der",
                 "slots/a/manifest.json"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == {"device_id": "3F45", "nats": ["nats://h:4222"], "ca": "ca.der"}
    assert (out / "config.json").stat().st_mode & 0o077 == 0
    with pytest.raises(CommandError, match="already holds"):
        make_device_fs(out, tmp_path / "b.bin", {"nats": ["nats://h:4222"]})
    with pytest.raises(CommandError, match="not hex"):
        make_device_fs(tmp_path / "x", tmp_path / "b.bin", {"device_id": "ZZ", "nats": ["n"]})
