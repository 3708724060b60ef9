"""`stanfleet release keygen|build|publish|promote|status|serve`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..errors import CommandError
from ..fleet.bundle_check import is_signed
from ..fleet.firmware_code import FIRMWARE_DIR
from ..ops import logs
from ..ops.lifecycle import Lifecycle
from ..ops.siteconfig import DEFAULT_ARTIFACTS_PORT
from ..security.signing import DEFAULT_KEYS_DIR, PRIVATE_NAME, PUBLIC_NAME
from . import settings
from .artifacts import ArtifactServer
from .commands import DEFAULT_DB, DEFAULT_SECURITY, add_connection_arguments
from .configmgr import ConfigStore
from .connection import open_session
from .releases import (
    ReleaseDir,
    check_version,
    fleet_state,
    publish,
    rollouts,
    save_rollout,
    version_key,
)

DEFAULT_RELEASES = "stanfleet-data/releases"


SIGNING_HELP = f"""\
Signed releases. `keygen` creates an ed25519 key pair in --keys DIR
(default {DEFAULT_KEYS_DIR}):
  {PRIVATE_NAME}  private, PEM, mode 0600: keep it off git and devices
  {PUBLIC_NAME}  the public key, in hex, for devices
`build` signs each bundle's manifest with DIR/{PRIVATE_NAME} when it
exists, or with --sign-key FILE; --unsigned skips signing. It says which.
A device provisioned with the public key (stanfleet provision
--release-key-file DIR/{PUBLIC_NAME}) installs only bundles signed by
that key; any other it reports as ota state "failed", never acked.
"""


def _default_url_base() -> str:
    # `stanfleet up` serves artifacts on 8080, over HTTPS when it made a CA.
    secure = os.path.exists(os.path.join(DEFAULT_SECURITY, "certs", "ca.pem"))
    return f"{'https' if secure else 'http'}://127.0.0.1:8080"


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = SIGNING_HELP
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    kg = sub.add_parser("keygen", help="create the release signing key pair (never overwrites)",
                        description=SIGNING_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    kg.add_argument("--keys", default=DEFAULT_KEYS_DIR, metavar="DIR",
                    help=f"where {PRIVATE_NAME} and {PUBLIC_NAME} go (default: %(default)s)")
    b = sub.add_parser("build", help="build a versioned firmware bundle from firmware/, signed "
                       "when a signing key exists", description=SIGNING_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("version", help="MAJOR.MINOR.PATCH")
    b.add_argument("--firmware", default=str(FIRMWARE_DIR), help="firmware source directory")
    b.add_argument("--keys", default=DEFAULT_KEYS_DIR, metavar="DIR",
                   help=f"sign with DIR/{PRIVATE_NAME} if it exists (default: %(default)s)")
    how = b.add_mutually_exclusive_group()
    how.add_argument("--sign-key", metavar="FILE",
                     help="sign with this private key (PEM or 32 raw bytes); it must exist")
    how.add_argument("--unsigned", action="store_true",
                     help="do not sign, even if a signing key exists")
    pub = sub.add_parser("publish", help="announce a built release on devices.releases")
    pub.add_argument("version")
    pub.add_argument("--canary", type=int, default=100, metavar="PCT",
                     help="share of devices (chosen by device ID) that install it first")
    pub.add_argument("--url-base", default=None,
                     help="where devices reach the artifact server, e.g. http://10.0.0.2:8080 "
                          f"(default: artifacts.base_url, else {_default_url_base()}, the one "
                          "stanfleet up runs)")
    pro = sub.add_parser("promote", help="extend a canary release to every device")
    pro.add_argument("version")
    pro.add_argument("--url-base", default=None, help="as for publish")
    st = sub.add_parser("status", help="every device's version and OTA state")
    st.add_argument("version", nargs="?", help="the release to follow (default: newest)")
    st.add_argument("--watch", action="store_true", help="refresh until every device is done")
    sv = sub.add_parser("serve", help="run the artifact server (with /healthz, /readyz, /metrics)")
    settings.add_config_argument(sv)
    sv.add_argument("--host", default=None, help="default: artifacts.host, else 0.0.0.0")
    sv.add_argument("--port", type=int, default=None,
                    help=f"default: artifacts.port, else {DEFAULT_ARTIFACTS_PORT}")
    sv.add_argument("--tls-cert", metavar="FILE", default=None,
                    help="HTTPS with this certificate (PEM; default: artifacts.tls_cert)")
    sv.add_argument("--tls-key", metavar="FILE", default=None,
                    help="its private key (PEM; default: artifacts.tls_key)")
    sv.add_argument("--releases", default=None,
                    help=f"directory of built bundles (default: artifacts.dir, else {DEFAULT_RELEASES})")
    settings.add_log_arguments(sv)
    b.add_argument("--releases", default=DEFAULT_RELEASES,  # not keygen: keys live apart
                   help="directory of built bundles (default: %(default)s)")
    for sp in (pub, pro, st):
        settings.add_config_argument(sp)
        sp.add_argument("--releases", default=None, help="directory of built bundles "
                        f"(default: artifacts.dir, else {DEFAULT_RELEASES})")
        add_connection_arguments(sp, "release-manager", configurable=True)
        sp.add_argument("--db", default=None, help="fleet database, a SQLite file or a "
                        f"postgresql:// URL (default: database.url, else {DEFAULT_DB})")


def run(args: argparse.Namespace) -> int:
    handler = {"keygen": _keygen, "build": _build, "publish": _publish, "promote": _promote, "status": _status,
               "serve": _serve}[args.action]
    if args.action in ("publish", "promote", "status"):
        resolve(args)
    result = handler(args)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def _keygen(args) -> int:
    from ..security.signing import keygen

    pair = keygen(args.keys)
    print(f"private key: {pair.private_path} (mode 0600: keep it secret, never commit it)")
    print(f"public key:  {pair.public_path}")
    print(f"  {pair.public_hex}")
    print(f"devices: stanfleet provision ... --release-key-file {pair.public_path}")
    return 0


def _signer(args):
    """The Signer for a build, or (None, why not)."""
    from ..security.signing import load_signer, private_path

    if args.unsigned:
        return None, "--unsigned"
    if args.sign_key:
        return load_signer(args.sign_key), ""
    default = private_path(args.keys)
    if default.exists():
        return load_signer(default), ""
    return None, f"no signing key at {default}; create one with: stanfleet release keygen"


def _build(args) -> int:
    from ..fleet.bundle_build import build_bundle
    from ..fleet.bundle_check import device_check

    version = check_version(args.version)
    signer, why = _signer(args)  # before building: a bad key fails fast
    os.makedirs(args.releases, exist_ok=True)
    out = ReleaseDir(args.releases).file(version)
    if os.path.exists(out):
        raise CommandError(f"{version} is already built ({out}); versions are immutable")
    info = build_bundle(args.firmware, version, out, signer.sign if signer else None)
    problem = device_check(out, signer.public_hex) if signer else ""
    if problem:
        os.remove(out)  # never leave a bundle devices would refuse
        raise CommandError(f"{version}: a device would refuse it ({problem}); bundle removed")
    print(f"{version}: {out} ({info['size']} bytes, sha256 {info['sha256']})")
    if signer:
        print(f"signed with {signer.path} (public key {signer.public_hex})")
    else:
        print(f"unsigned ({why}): devices with a release_key will refuse it")
    return 0


def _signed(path: str) -> str:
    try:
        return "signed" if is_signed(path) else "unsigned"
    except OSError:
        return "unreadable"


def resolve(args: argparse.Namespace) -> None:
    """publish, promote, status: flags, else --config, else the demo fleet's defaults,
    resolved once here (args.releases, args.url_base, args.connection, args.db)."""
    cfg = settings.load(args)
    art = cfg.artifacts if cfg else None
    args.releases = settings.pick(args.releases, art.dir if art else None, DEFAULT_RELEASES)
    if "url_base" in args:
        args.url_base = settings.pick(args.url_base, (art.base_url or None) if art else None,
                                      _default_url_base())
    args.connection = settings.connection(args, "release-manager", cfg)
    args.db = settings.pick(args.db, cfg.database.url if cfg else None, DEFAULT_DB)


async def _session(args, client_id: str):
    conn = args.connection
    return await open_session(conn.urls, conn.cluster_id, client_id, once=True,
                              **conn.nats_options())


async def _announce(args, version: str, pct: int) -> int:
    artifact = ReleaseDir(args.releases).artifact(version)
    sc, nc = await _session(args, f"release-manager-{os.getpid()}")
    try:
        await publish(sc, artifact, args.url_base, pct)
    finally:
        await sc.close()
        await nc.close()
    save_rollout(args.releases, version, pct)
    who = "all devices" if pct >= 100 else f"{pct}% of devices (canary)"
    print(f"{version} published to {who}: {artifact.size} bytes, sha256 {artifact.sha256}, "
          f"{_signed(artifact.path)}")
    return 0


def _publish(args):
    return _announce(args, check_version(args.version), args.canary)


def _promote(args):
    version = check_version(args.version)
    if version not in rollouts(args.releases):
        raise CommandError(f"{version} was never published; publish it first")
    return _announce(args, version, 100)


async def _status(args) -> int:
    releases = ReleaseDir(args.releases)
    version = check_version(args.version) if args.version else (releases.versions() or [None])[-1]
    if args.version and version not in releases.versions():
        raise CommandError(f"no artifact for {version} in {args.releases}")
    pct = rollouts(args.releases).get(version, 100) if version else 100
    store = ConfigStore(args.db)
    try:
        devices = store.known_devices()
    finally:
        store.close()
    if not devices:
        raise CommandError("no known devices (the listener records them as they appear)")
    sc, nc = await _session(args, f"release-status-{os.getpid()}")
    try:
        while True:
            states = await fleet_state(sc, devices, version, pct)
            _print_status(version, pct, states, sys.stdout)
            busy = [s for s in states if s.ota_state in ("pending", "downloading", "rebooting")]
            if not args.watch or not busy:
                return 0
            await asyncio.sleep(2)  # a refresh interval for a person watching, not a sync
    finally:
        await sc.close()
        await nc.close()


def _print_status(version, pct, states, out) -> None:
    done = sum(1 for s in states if s.ota_state in ("installed",))
    target = [s for s in states if s.ota_state != "not selected"]
    width = 30
    filled = int(width * done / max(len(target), 1))
    title = f"release {version}" if version else "no release built"
    scope = "" if pct >= 100 else f" (canary {pct}%)"
    out.write(f"{title}{scope}: [{'#' * filled}{'.' * (width - filled)}] "
              f"{done}/{len(target)} installed\n")
    out.write(f"{'device':<12} {'version':<10} {'state':<14} reason\n")
    for s in sorted(states, key=lambda s: s.device):
        out.write(f"{s.device:<12} {s.version or '-':<10} {s.ota_state:<14} {s.reason}\n")
    out.flush()


async def _serve(args) -> int:
    """The artifact server as a long-running service: --config, SIGTERM, SIGHUP
    (log settings), and a missing folder or certificate is a one-line error."""
    cfg = settings.load(args)
    logs.setup(*settings.log_settings(args, cfg))
    art = cfg.artifacts if cfg else None
    releases = settings.pick(args.releases, art.dir if art else None, DEFAULT_RELEASES)
    cert = settings.pick(args.tls_cert, art.tls_cert if art else None, None)
    key = settings.pick(args.tls_key, art.tls_key if art else None, None)
    if not os.path.isdir(releases):
        raise CommandError(f"no releases directory {releases} (run: stanfleet release build)")
    if bool(cert) != bool(key):
        raise CommandError("--tls-cert and --tls-key go together")
    ssl_context = None
    if cert:
        from ..security.certs import server_context_files

        try:
            ssl_context = server_context_files(cert, key)
        except (OSError, ValueError) as e:
            raise CommandError(f"{cert}: cannot load the TLS certificate and key ({e})") from None
    server = ArtifactServer(releases, settings.pick(args.host, art.host if art else None, "0.0.0.0"),
                            settings.pick(args.port, art.port if art else None,
                                          DEFAULT_ARTIFACTS_PORT), ssl_context=ssl_context)
    lifecycle = Lifecycle()
    lifecycle.on_reload(lambda: logs.setup(*settings.log_settings(args, settings.load(args))))
    await server.start()
    await lifecycle.stopping()
    await server.stop()  # in-flight downloads finish or are cut; devices retry them
    return 0


__all__ = ["configure", "run", "version_key"]
