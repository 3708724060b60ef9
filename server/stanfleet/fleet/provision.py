"""`stanfleet provision`: the files one device's flash holds (docs/device.md).

Builds, in a directory, the bootloader (boot.py, main.py, otaboot.mpy), the
application bundle unpacked into slot a, and the device's config.json and
CA. flash.sh copies the directory onto a board; the simulator runs a device
in it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from ..errors import CommandError
from .bundle_build import compile_module
from .firmware_code import FIRMWARE_DIR, load

DEVICE_ID = re.compile(r"^[0-9A-Fa-f]{1,32}$")


class _BytesStream:
    """The async read() of a stream, over bytes in memory."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    async def read(self, n: int) -> bytes:
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += len(out)
        return out

    async def readline(self) -> bytes:
        end = bytes(self.data[self.pos:]).find(b"\n")
        return await self.read(len(self.data) - self.pos if end < 0 else end + 1)


def unpack_bytes(data: bytes, dest: str, check_sig=None) -> dict:
    """Unpack bundle bytes into ``dest`` with the device's own code; returns the
    manifest, raises the firmware's BundleError. An in-memory stream never
    suspends, so one step runs unpack to its end: this works inside a running
    event loop (release publish) as well as outside one."""
    bundle = load("bundle")
    coro = bundle.unpack(_BytesStream(data), dest, len(data), hashlib.sha256(data).hexdigest(),
                         check_sig)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("bundle.unpack suspended on an in-memory stream")


def ca_der(path: str) -> bytes:
    """A CA certificate as DER (MicroPython's ssl wants DER), from PEM or DER."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    raw = Path(path).read_bytes()
    try:
        cert = (x509.load_pem_x509_certificate(raw) if b"-----BEGIN" in raw
                else x509.load_der_x509_certificate(raw))
    except ValueError as e:
        raise CommandError(f"{path} is not a certificate: {e}") from None
    return cert.public_bytes(Encoding.DER)


def make_device_fs(out_dir: str | os.PathLike, bundle_path: str | os.PathLike, config: dict,
                   ca: bytes | None = None, firmware_dir: str | os.PathLike = FIRMWARE_DIR) -> None:
    """Write a device's flash contents to ``out_dir`` (created; must not hold a
    device already). ``config`` becomes config.json; ``ca`` (DER) becomes ca.der."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise CommandError(f"{out} already holds a provisioned device")
    device_id = str(config.get("device_id", ""))
    if device_id and not DEVICE_ID.match(device_id):
        raise CommandError(f"device ID {device_id!r} is not hex")
    if not config.get("nats"):
        raise CommandError("a device needs at least one NATS URL")
    fw = Path(firmware_dir)
    bundle = load("bundle")
    (out / "slots" / "a").mkdir(parents=True, exist_ok=True)
    try:
        unpack_bytes(Path(bundle_path).read_bytes(), str(out / "slots" / "a"))
    except bundle.BundleError as e:
        raise CommandError(f"{bundle_path}: {e}") from None
    for name in ("boot.py", "main.py"):
        shutil.copyfile(fw / name, out / name)
    (out / "otaboot.mpy").write_bytes(compile_module(fw / "otaboot.py", "otaboot.py"))
    (out / "ota.json").write_text(json.dumps({"active": "a", "trial": None, "last": None}))
    cfg = dict(config)
    if ca is not None:
        (out / "ca.der").write_bytes(ca)
        cfg["ca"] = "ca.der"
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    os.chmod(out / "config.json", 0o600)  # it may hold the device's password


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory to write the device's files to")
    p.add_argument("--bundle", required=True, help="a built bundle (stanfleet release build)")
    p.add_argument("--device-id", help="hex device ID (default: the board's unique ID)")
    p.add_argument("--nats", action="append", required=True, metavar="URL",
                   help="NATS server, e.g. tls://host:4222 (repeat for more)")
    p.add_argument("--cluster-id", default="test-cluster")
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-pass")
    p.add_argument("--creds", metavar="FILE",
                   help='JSON file {"user": ..., "password": ...} from stanfleet creds')
    p.add_argument("--ca", metavar="FILE", help="CA certificate (PEM or DER) for TLS")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--release-key", metavar="HEX",
                     help="ed25519 public key (hex): install only releases it signed")
    key.add_argument("--release-key-file", metavar="FILE",
                     help="the same, from the release-signing.pub that "
                          "'stanfleet release keygen' wrote (or a PEM public key)")
    p.add_argument("--sending-frequency", type=int, help="factory default, in seconds")


def run(args: argparse.Namespace) -> int:
    cfg: dict = {"cluster_id": args.cluster_id, "nats": args.nats}
    if args.device_id:
        cfg["device_id"] = args.device_id.upper()
    if args.wifi_ssid:
        cfg["wifi"] = {"ssid": args.wifi_ssid, "password": args.wifi_pass or ""}
    if args.creds:
        try:
            creds = json.loads(Path(args.creds).read_text())
            cfg["user"], cfg["password"] = creds["user"], creds["password"]
            # The streaming server's authorization takes a user's inboxes only
            # under _INBOX.<user>. (docs/security-design.md).
            cfg["inbox_prefix"] = creds.get("inbox_prefix") or f"_INBOX.{creds['user']}"
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CommandError(f"{args.creds}: not a credentials file ({e})") from None
    if args.release_key or args.release_key_file:
        from ..security.signing import check_public_hex, read_public_key

        cfg["release_key"] = (check_public_hex(args.release_key) if args.release_key
                              else read_public_key(args.release_key_file))
    if args.sending_frequency is not None:
        load("cfgrules").check("sending_frequency", args.sending_frequency)
        cfg["sending_frequency"] = args.sending_frequency
    if not os.path.exists(args.bundle):
        raise CommandError(f"no bundle {args.bundle} (build one: stanfleet release build X.Y.Z)")
    ca = ca_der(args.ca) if args.ca else None
    make_device_fs(args.out, args.bundle, cfg, ca)
    print(f"provisioned {args.out}: device {cfg.get('device_id', '(board unique ID)')}")
    return 0
