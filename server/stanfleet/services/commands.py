"""`stanfleet listener` and `stanfleet readings`."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import logging
import os
import sys

from ..errors import CommandError
from ..signals import stop_event
from ..streaming.limits import LimitsError, parse_duration
from .connection import secure_options
from .listener import Listener, ListenerConfig
from .readings_db import ReadingsDB

DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_TLS_NATS = "tls://127.0.0.1:4222"
DEFAULT_DB = "stanfleet-data/fleet.db"
DEFAULT_SECURITY = "stanfleet-data/security"  # where `stanfleet up` keeps CA and credentials


def add_connection_arguments(p: argparse.ArgumentParser, role: str | None = None) -> None:
    """--nats, --cluster-id, --creds and --ca. Where `stanfleet up` left a security
    directory (stanfleet-data/security), its CA and this role's credentials are
    the defaults, with TLS on the default URL: the commands then just work
    against the demo fleet."""
    ca = os.path.join(DEFAULT_SECURITY, "certs", "ca.pem")
    ca = ca if os.path.exists(ca) else None
    creds = os.path.join(DEFAULT_SECURITY, "services", f"{role}.json") if role else None
    creds = creds if creds and os.path.exists(creds) else None
    nats_url = DEFAULT_TLS_NATS if ca else DEFAULT_NATS
    p.add_argument("--nats", default=nats_url, help="NATS URL (default: %(default)s)")
    p.add_argument("--cluster-id", default="test-cluster",
                   help="STAN cluster ID (default: %(default)s)")
    p.add_argument("--creds", metavar="FILE", default=creds,
                   help="the service's credentials (stanfleet creds add-service ROLE writes "
                        "them to SECURITY-DIR/services/ROLE.json)"
                        + (f"; default: {creds}" if creds else ""))
    p.add_argument("--ca", metavar="FILE", default=ca,
                   help="CA certificate (PEM) the NATS server's TLS certificate is checked "
                        "against, e.g. SECURITY-DIR/certs/ca.pem" + (f"; default: {ca}" if ca else ""))


def connection_options(args: argparse.Namespace) -> dict:
    """nats.connect options from --creds and --ca (TLS, user, inbox prefix)."""
    return secure_options(getattr(args, "creds", None), getattr(args, "ca", None))


def configure_listener(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p, "listener")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file (default: %(default)s)")
    p.add_argument("--name", default="1",
                   help="instance name; instances share the work (clientID listener-NAME)")


def run_listener(args: argparse.Namespace) -> int:
    async def serve() -> None:
        listener = Listener(ListenerConfig(nats_url=args.nats, cluster_id=args.cluster_id,
                                           name=args.name, db_path=args.db,
                                           nats_options=connection_options(args)))
        stop = stop_event()
        runner = asyncio.create_task(listener.run())
        await asyncio.wait([runner, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        await listener.stop()
        await runner
        logging.getLogger("stanfleet.listener").info(
            "stopped: %d readings saved, %d rejected", listener.saved, listener.rejected)

    asyncio.run(serve())
    return 0


def configure_readings(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device ID, e.g. 3F45")
    p.add_argument("--since", default=None, help="only readings newer than this, e.g. 10m, 24h")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file (default: %(default)s)")


def run_readings(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            ago = parse_duration(args.since)
        except LimitsError as e:
            raise CommandError(str(e))
        when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ago)
        since = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    db = ReadingsDB(args.db)
    try:
        if args.device not in db.devices() and not db.count(args.device):
            raise CommandError(f"unknown device {args.device!r} (no readings in {args.db})")
        rows = db.readings(args.device, since)
    finally:
        db.close()
    out = sys.stdout
    if args.format == "json":
        json.dump([{"seq": s, "ts": ts, "temp": t} for s, ts, t in rows], out)
        out.write("\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["seq", "ts", "temp"])
        w.writerows(rows)
    else:
        out.write(f"{'seq':>8}  {'ts':<24}  {'temp':>7}\n")
        for s, ts, t in rows:
            out.write(f"{s:>8}  {ts:<24}  {t:>7.2f}\n")
    return 0
