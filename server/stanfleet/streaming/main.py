"""`stanfleet streaming-server`: run the server until SIGINT/SIGTERM.

Also what `nats-streaming-server` is in scripts: the process-level flags
(-l log file, -T, -s/-r syslog, -P pid file, -sl signal) are handled here.
Start-up is ordered for speed: the embedded nats-server is spawned before the
heavy imports (nats-py, protobuf, aiohttp), so both proceed at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from ..errors import CommandError
from ..ops.logs import JsonLines, level_of
from .options import ServerOptions, add_arguments, from_args

log = logging.getLogger("stanfleet.streaming")

SIGNALS = {"stop": signal.SIGKILL, "quit": signal.SIGINT, "term": signal.SIGTERM,
           "reopen": signal.SIGUSR1, "reload": signal.SIGHUP, "ldm": signal.SIGUSR2}
DEFAULT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(p: argparse.ArgumentParser) -> None:
    p.epilog = ("Go's nats-streaming-server flags are accepted (see README, 'Every flag'). "
                "With no -store the store is MEMORY, as in Go: a persistent server needs "
                "-store file -dir DIR.")
    add_arguments(p)


def setup_logging(opts: ServerOptions) -> None:
    fmt = DEFAULT_LOG_FORMAT if opts.logtime else "%(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = []
    if opts.log_file:
        handlers.append(logging.FileHandler(opts.log_file))
    if opts.syslog or opts.remote_syslog:
        from logging.handlers import SysLogHandler

        address: object = "/dev/log"
        if opts.remote_syslog:
            rest = opts.remote_syslog.split("://", 1)[-1]
            host, _, port = rest.partition(":")
            address = (host or "localhost", int(port or 514))
        handlers.append(SysLogHandler(address=address))
    root = logging.getLogger()
    if handlers:
        for h in list(root.handlers):
            root.removeHandler(h)
    elif not root.handlers:
        handlers.append(logging.StreamHandler())
    for h in handlers:
        h.setFormatter(logging.Formatter(fmt))
        root.addHandler(h)
    formatter = JsonLines() if opts.log_format == "json" else logging.Formatter(fmt)
    for h in root.handlers:
        h.setFormatter(formatter)
    verbose = opts.debug or opts.trace
    level = logging.DEBUG if verbose else level_of(opts.log_level or "info")
    logging.getLogger("stanfleet").setLevel(level)


def send_signal(spec: str, pid_file: str | None) -> int:
    """`-sl quit=PID`: what the Go server's --signal does, for a running server."""
    name, _, pid_text = spec.partition("=")
    sig = SIGNALS.get(name.lower())
    if sig is None:
        raise CommandError(f"unknown signal {name!r}: {', '.join(SIGNALS)}")
    if not pid_text and pid_file:
        try:
            with open(pid_file) as f:
                pid_text = f.read().strip()
        except OSError as e:
            raise CommandError(f"cannot read pid file {pid_file}: {e.strerror}") from None
    if not pid_text.isdigit():
        raise CommandError("-sl needs the server's pid: -sl quit=PID, or -P PIDFILE")
    try:
        os.kill(int(pid_text), sig)
    except OSError as e:
        raise CommandError(f"cannot signal process {pid_text}: {e.strerror}") from None
    return 0


def run_ft_group(opts: ServerOptions) -> int:
    """--ft_group: stand by until this instance holds the group's lease, then serve
    (ft.py); run_server knows, and takes no early connects for a standby."""
    if not opts.nats_url:
        raise CommandError("--ft_group needs -ns: the instances of a group share one JetStream")
    from .startup import run_server

    return run_server(opts)


def run(args: argparse.Namespace) -> int:
    if args.signal:
        return send_signal(args.signal, args.pid_file)
    opts = from_args(args)
    setup_logging(opts)
    for note in opts.notes:
        log.info("%s", note)
    if opts.pid_file:
        with open(opts.pid_file, "w") as f:
            f.write(str(os.getpid()))
    try:
        if opts.ft_group:
            return run_ft_group(opts)
        from .startup import run_server

        return run_server(opts)
    finally:
        if opts.pid_file:
            try:
                os.remove(opts.pid_file)
            except OSError:
                pass


def standalone_main(argv: list[str]) -> int:
    """The `streaming-server` subcommand without building every other command's parser."""
    p = argparse.ArgumentParser(prog="stanfleet streaming-server",
                                description="run the STAN streaming server")
    configure(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (CommandError, ValueError, OSError) as e:
        print(f"stanfleet: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from ..broker import BrokerError  # nats-server would not start: say why, one line

        if not isinstance(e, BrokerError):
            raise
        print(f"stanfleet: {e}", file=sys.stderr)
        return 1
