"""What the service commands share (connection flags), and `stanfleet readings`."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys

from ..defaults import DEFAULT_CLUSTER_ID
from ..errors import CommandError
from ..streaming.limits import LimitsError, parse_duration
from . import settings
from .connection import secure_options
from .readings_store import describe, open_store

DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_TLS_NATS = "tls://127.0.0.1:4222"
DEFAULT_DB = "stanfleet-data/fleet.db"
DEFAULT_SECURITY = "stanfleet-data/security"  # where `stanfleet up` keeps CA and credentials


def connection_fallbacks(role: str | None) -> dict:
    """Where `stanfleet up` left a security directory (stanfleet-data/security),
    its CA and this role's credentials, with TLS on the default URL: the
    commands then just work against the demo fleet."""
    ca = os.path.join(DEFAULT_SECURITY, "certs", "ca.pem")
    ca = ca if os.path.exists(ca) else None
    creds = os.path.join(DEFAULT_SECURITY, "services", f"{role}.json") if role else None
    creds = creds if creds and os.path.exists(creds) else None
    return {"nats": DEFAULT_TLS_NATS if ca else DEFAULT_NATS, "ca": ca, "creds": creds}


def add_connection_arguments(p: argparse.ArgumentParser, role: str | None = None,
                             configurable: bool = False) -> None:
    """--nats, --cluster-id, --creds and --ca, defaulting to the demo fleet's
    (connection_fallbacks). configurable=True (services with --config): the
    flags default to None and settings.connection() resolves them."""
    fb = connection_fallbacks(role)
    creds, ca = fb["creds"], fb["ca"]
    if configurable:
        p.set_defaults(_connection_fallbacks=fb)
    p.add_argument("--nats", default=None if configurable else fb["nats"],
                   help="NATS URL" + (", or several comma-separated (a cluster)" if configurable
                                      else "") + f" (default: {fb['nats']})")
    p.add_argument("--cluster-id", default=None if configurable else DEFAULT_CLUSTER_ID,
                   help=f"STAN cluster ID (default: {DEFAULT_CLUSTER_ID})")
    p.add_argument("--creds", metavar="FILE", default=None if configurable else creds,
                   help="the service's credentials (stanfleet creds add-service ROLE writes "
                        "them to SECURITY-DIR/services/ROLE.json)"
                        + (f"; default: {creds}" if creds else ""))
    p.add_argument("--ca", metavar="FILE", default=None if configurable else ca,
                   help="CA certificate (PEM) the NATS server's TLS certificate is checked "
                        "against, e.g. SECURITY-DIR/certs/ca.pem" + (f"; default: {ca}" if ca else ""))


def connection_options(args: argparse.Namespace) -> dict:
    """nats.connect options from --creds and --ca (TLS, user, inbox prefix)."""
    return secure_options(getattr(args, "creds", None), getattr(args, "ca", None))


def configure_readings(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", help="device ID, e.g. 3F45")
    p.add_argument("--since", default=None, help="only readings newer than this, e.g. 10m, 24h")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--db", default=None,
                   help=f"SQLite file or postgresql:// URL (default: database.url, else {DEFAULT_DB})")
    settings.add_config_argument(p)


def run_readings(args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            ago = parse_duration(args.since)
        except LimitsError as e:
            raise CommandError(str(e))
        when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ago)
        since = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    cfg = settings.load(args)
    args.db = settings.pick(args.db, cfg.database.url if cfg else None, DEFAULT_DB)
    db = open_store(args.db)
    try:
        if args.device not in db.devices() and not db.count(args.device):
            raise CommandError(f"unknown device {args.device!r} "
                               f"(no readings in {describe(args.db)})")
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
