"""The `stanfleet` command: one entry point, one table of subcommands.

Each subcommand module offers `configure(parser)` and `run(args) -> int`.
User errors are raised as CommandError (or a known exception type) and
printed as `stanfleet: message` with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys

from .errors import CommandError

# name -> (module, help). Modules are imported lazily so `stanfleet --help`
# and light commands stay fast.
COMMANDS = {
    "up": ("stanfleet.up", "run the demo fleet: broker, services and simulated devices"),
    "certs": ("stanfleet.security.certs", "create the private CA and server certificate for TLS"),
    "creds": ("stanfleet.security.creds", "device and service credentials for the broker"),
    "streaming-server": ("stanfleet.streaming.main", "run the STAN streaming server"),
    "listener": ("stanfleet.services.listener_cmd", "save every device reading to the database"),
    "readings": ("stanfleet.services.readings_cmd", "show a device's saved readings"),
    "config": ("stanfleet.services.config_cmd", "send configuration to devices, show it"),
    "release": ("stanfleet.services.release_cmd", "build, publish and follow firmware releases"),
    "dashboard": ("stanfleet.dashboard.cmd", "the fleet in a browser: devices, charts, config, releases"),
    "sim": ("stanfleet.fleet.sim_cmd", "run simulated devices (MicroPython unix port) against a NATS server"),
    "provision": ("stanfleet.fleet.provision", "write the files for one device's flash"),
    "deploy": ("stanfleet.deploy", "check a site's deployment config and its dependencies"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stanfleet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).configure(sp)
    return p


# Commands that keep running log what they do; one-shot commands print their
# result and log only warnings and errors.
SERVICES = {"up", "streaming-server", "listener", "sim", "dashboard"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["streaming-server"]:
        # The drop-in for nats-streaming-server must start fast: no other
        # command's parser (and imports) on its way, and no garbage collection
        # while it imports (startup.collect_from_now turns it back on): imports
        # make many long-lived objects and little garbage, and the collector's
        # passes over them cost ~10 ms of CPU on the way to ready.
        gc.disable()
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            return importlib.import_module("stanfleet.streaming.main").standalone_main(argv[1:])
        finally:
            gc.enable()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.command in SERVICES else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except KeyboardInterrupt:
        return 130
    except (CommandError, ValueError, OSError) as e:
        print(f"stanfleet: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
