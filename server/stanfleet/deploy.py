"""`stanfleet deploy check --config FILE`: is this site's config right, and is
every dependency it names there?

One line per check (`ok` or `FAIL`, what, why), exit status 1 if any failed:
the file itself, each file it names (CA, credentials, certificates), each
NATS URL, the streaming server with each service's credentials, the
database (reached, never changed: migrations run when the listener starts),
and the artifacts folder. Run it on each machine before starting a service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Callable

import nats

from .errors import CommandError
from .ops import siteconfig
from .ops.siteconfig import SiteConfig
from .services.connection import load_credentials, secure_options
from .services.preflight import reach_stan
from .services.readings_store import describe, probe

DEFAULT_NATS_TIMEOUT = 3.0  # seconds per NATS URL


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("check", help="validate the deployment config and reach each dependency")
    c.add_argument("--config", metavar="FILE", required=True, help="deployment config (TOML)")


class Report:
    def __init__(self, out=sys.stdout):
        self.out, self.failed = out, 0

    def line(self, ok: bool, what: str, detail: str) -> None:
        self.failed += not ok
        self.out.write(f"{'ok  ' if ok else 'FAIL'}  {what:<22} {detail}\n")
        self.out.flush()

    def attempt(self, what: str, fn: Callable[[], str]) -> bool:
        try:
            self.line(True, what, fn())
            return True
        except (CommandError, OSError, ValueError) as e:
            self.line(False, what, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return False


def run(args: argparse.Namespace) -> int:
    report = Report()
    try:
        cfg = siteconfig.load(args.config)
    except CommandError as e:
        report.line(False, "config", str(e))
        return 1
    report.line(True, "config", f"{args.config}: {len(cfg.nats.urls)} NATS URL(s), cluster "
                                f"{cfg.nats.cluster_id!r}, database {describe(cfg.database.url)}")
    failed = check_files(cfg, report)
    asyncio.run(check_services(cfg, report, not any(k.startswith("nats.") for k in failed)))
    report.attempt("database", lambda: probe(cfg.database.url))
    report.attempt("artifacts.dir", lambda: _folder(cfg.artifacts.dir))
    return 1 if report.failed else 0


def check_files(cfg: SiteConfig, report: Report) -> list[str]:
    """Each file the config names; the keys of those that failed."""
    failed = []
    for key, path in cfg.files():
        if not os.path.isfile(path):
            report.line(False, key, f"{path}: no such file")
            failed.append(key)
        elif key.startswith("nats.creds."):
            if not report.attempt(key, lambda p=path: f"{p}: user {load_credentials(p)[0]}"):
                failed.append(key)
        elif key == "nats.ca":
            if not report.attempt(key, lambda p=path: _ca(p)):
                failed.append(key)
        else:
            report.line(True, key, path)
    return failed


def _ca(path: str) -> str:
    secure_options(None, path)  # loads it: CommandError if it is not a CA certificate
    return f"{path}: CA certificate"


def _folder(path: str) -> str:
    if not os.path.isdir(path):
        raise CommandError(f"{path}: no such folder (stanfleet release build fills it)")
    return f"{path}: {sum(1 for n in os.listdir(path) if n.endswith('.bin'))} bundle(s)"


async def check_services(cfg: SiteConfig, report: Report, files_ok: bool) -> None:
    """Each NATS node answers; then, through the cluster, the streaming server
    answers each role's credentials (the TLS handshake and the login are checked there)."""
    if not files_ok:
        report.line(False, "nats", "not tried: fix the nats files above first")
        return
    reached = 0
    for url in cfg.nats.urls:
        reached += await _attempt(report, f"nats {_host(url)}", lambda u=url: _nats_info(u))
    if not reached:
        report.line(False, "stan", "not tried: no NATS URL answered")
        return
    for role in sorted(cfg.nats.creds) or [None]:
        opts = secure_options(cfg.nats.creds.get(role) if role else None, cfg.nats.ca)
        if role == siteconfig.STREAMING_CREDS_ROLE:
            # The streaming server's own NATS user is no STAN client: check its login.
            await _attempt(report, f"nats as {role}",
                           lambda o=opts: _nats_login(cfg.nats.urls, o))
            continue
        client_id = f"deploy-check-{role or 'anonymous'}-{os.getpid()}"
        await _attempt(report, f"stan as {role or 'anonymous'}",
                       lambda o=opts, c=client_id: reach_stan(cfg.nats.urls, cfg.nats.cluster_id,
                                                              c, o))


async def _nats_login(urls: list[str], opts: dict) -> str:
    async def quiet(e: Exception) -> None:
        pass  # the failure is what connect raises: one line, by _attempt
    nc = await nats.connect(urls, connect_timeout=3, allow_reconnect=False, error_cb=quiet,
                            **opts)
    try:
        return f"user {opts.get('user')} logged in at {_host(str(nc.connected_url.geturl()))}"
    finally:
        await nc.close()


async def _attempt(report: Report, what: str, fn) -> bool:
    try:
        report.line(True, what, await fn())
        return True
    except (CommandError, OSError, ValueError, asyncio.TimeoutError, nats.errors.Error) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        report.line(False, what, text)
        return False


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("@")[-1]


async def _nats_info(url: str) -> str:
    """Read the node's INFO line, which NATS sends in plaintext before any TLS or
    login: the node is up and says its version and whether it wants TLS."""
    hostport = _host(url)
    host, _, port = hostport.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]") or hostport, int(port or 4222)),
            DEFAULT_NATS_TIMEOUT)
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        raise CommandError(f"cannot reach {url}: {str(e) or type(e).__name__}") from None
    try:
        line = await asyncio.wait_for(reader.readline(), DEFAULT_NATS_TIMEOUT)
    except asyncio.TimeoutError:
        line = b""
    finally:
        writer.close()
    if not line.startswith(b"INFO "):
        raise CommandError(f"{url}: not a NATS server (no INFO line)")
    try:
        info = json.loads(line[5:])
    except ValueError:
        raise CommandError(f"{url}: unreadable INFO line") from None
    tls = "TLS" if info.get("tls_required") else "plaintext"
    return f"{url}: nats-server {info.get('version', '?')} ({tls})"
