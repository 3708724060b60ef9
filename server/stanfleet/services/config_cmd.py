"""`stanfleet config set|show`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..client import Client
from ..client.errors import StanError
from ..errors import CommandError
from . import settings
from .commands import DEFAULT_DB, add_connection_arguments
from .configmgr import ConfigStore, last_status, parse_settings, send
from .connection import open_session


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("set", help="send settings to one device or all known devices")
    s.add_argument("target", nargs="?", help="device ID (or use --all)")
    s.add_argument("settings", nargs="*", metavar="key=value",
                   help="e.g. sending_frequency=60")
    s.add_argument("--all", action="store_true", help="every known device")
    s.add_argument("--new", action="store_true",
                   help="allow a device never seen yet (it gets the config on first connect)")
    sh = sub.add_parser("show", help="desired next to applied config, per device")
    sh.add_argument("target", nargs="?", help="device ID (default: all known devices)")
    for sp in (s, sh):
        settings.add_config_argument(sp)
        add_connection_arguments(sp, "config-manager", configurable=True)
        sp.add_argument("--db", default=None, help="fleet database, a SQLite file or a "
                        f"postgresql:// URL (default: database.url, else {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    cfg = settings.load(args)
    args.db = settings.pick(args.db, cfg.database.url if cfg else None, DEFAULT_DB)
    args.connection = settings.connection(args, "config-manager", cfg)
    return asyncio.run(_set(args) if args.action == "set" else _show(args))


async def _connect(args) -> tuple[Client, object]:
    conn = args.connection
    return await open_session(conn.urls, conn.cluster_id, f"config-manager-{os.getpid()}",
                              once=True, **conn.nats_options())


async def _set(args) -> int:
    if args.all:
        if args.target:  # with --all, every word is a setting
            args.settings.insert(0, args.target)
            args.target = None
    elif not args.target or "=" in args.target:
        raise CommandError("give a device ID or --all before the settings")
    wanted = parse_settings(args.settings)
    store = ConfigStore(args.db)
    try:
        known = store.known_devices()
        if args.all:
            devices = known
            if not devices:
                raise CommandError("no known devices (the listener records them as they appear)")
        else:
            if args.target not in known and not args.new:
                raise CommandError(f"unknown device {args.target!r} (use --new for a device "
                                   "that has not connected yet)")
            devices = [args.target]
        sc, nc = await _connect(args)
        failed = 0
        try:
            for device in devices:
                try:
                    await send(sc, device, wanted)
                except (StanError, asyncio.TimeoutError) as e:
                    failed += 1
                    print(f"stanfleet: {device}: not sent: {e}", file=sys.stderr)
                    continue
                store.record(device, wanted)
                shown = " ".join(f"{k}={v}" for k, v in wanted.items())
                print(f"{device}: {shown} sent")
        finally:
            await sc.close()
            await nc.close()
    finally:
        store.close()
    return 1 if failed else 0


async def _show(args) -> int:
    store = ConfigStore(args.db)
    try:
        devices = [args.target] if args.target else store.known_devices()
        if args.target and args.target not in store.known_devices():
            raise CommandError(f"unknown device {args.target!r}")
        desired = {d: store.desired(d) for d in devices}
    finally:
        store.close()
    sc, nc = await _connect(args)
    try:
        statuses = await asyncio.gather(*(last_status(sc, d) for d in devices))
    finally:
        await sc.close()
        await nc.close()
    print(f"{'device':<12} {'key':<20} {'desired':>10} {'applied':>10}  state")
    for device, status in zip(devices, statuses):
        applied = status.config if status is not None else {}
        keys = sorted(set(desired[device]) | set(applied)) or ["-"]
        for key in keys:
            want, have = desired[device].get(key, "-"), applied.get(key, "-")
            if status is None:
                state = "never reported"
            elif status.rejected:
                state = f"INVALID STATUS: {status.rejected}"
            elif key in desired[device] and want != have:
                state = "NOT APPLIED"
            else:
                state = "ok"
            print(f"{device:<12} {key:<20} {want!s:>10} {have!s:>10}  {state}")
    return 0
