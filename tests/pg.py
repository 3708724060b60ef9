"""A real PostgreSQL for tests: Debian's `postgresql` package, a cluster made
by initdb in a temporary folder, on a free port, its unix socket in that folder.

Importable by any suite: `from tests.pg import postgres_server, pg_url` in a
conftest (or a test module) brings the fixtures in. CI runs as root and
PostgreSQL refuses to run as root, so initdb and pg_ctl run as the `postgres`
user (`runuser -u postgres`), which owns the folder. Where the package is not
installed the tests skip and say so.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

DEFAULT_START_TIMEOUT = 60  # seconds for pg_ctl -w


def bin_dir() -> str | None:
    """The newest /usr/lib/postgresql/<major>/bin with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def why_not() -> str:
    """"" when a PostgreSQL can be started here, else the reason to skip."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]'; .ci/setup does)"
    if bin_dir() is None:
        return ("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb "
                "(apt-get install postgresql; .ci/setup does)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: cannot start PostgreSQL as the postgres user"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster (initdb + pg_ctl); `database()` gives each test its own."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.dir = tempfile.mkdtemp(prefix="stanfleet-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None  # who runs the server
        self.superuser = "postgres"

    def _run(self, *cmd: str) -> None:
        as_user = ["runuser", "-u", self.user, "--"] if self.user else []
        out = subprocess.run(as_user + [os.path.join(self.bin, cmd[0]), *cmd[1:]],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr or out.stdout}")

    def start(self) -> "PostgresServer":
        """initdb, then run()."""
        if self.user:
            shutil.chown(self.dir, self.user)
        self._run("initdb", "-D", self.data, "-U", self.superuser, "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        return self.run()

    def run(self) -> "PostgresServer":
        """Start the server on its port (again, after halt()); returns once it accepts."""
        # fsync off: a killed server loses nothing (the kernel has the writes), only a
        # machine crash would. synchronous_commit stays on: a commit is in the WAL
        # when it returns, which the listener's ack-after-commit relies on.
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                  "-o", opts, "-w", "-t", str(DEFAULT_START_TIMEOUT), "start")
        return self

    def halt(self, mode: str = "immediate") -> None:
        """Stop the server and keep its data: as a crash (immediate) or a clean stop (fast)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def stop(self) -> None:
        try:
            self.halt()
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL per test session (per xdist worker); skipped where it cannot run."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def make_postgres_server():
    """Factory: a PostgreSQL of the test's own, for tests that stop and restart it."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    started: list[PostgresServer] = []

    def make() -> PostgresServer:
        started.append(PostgresServer().start())
        return started[-1]
    yield make
    for server in started:
        server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The URL of a fresh, empty database of its own for one test."""
    return postgres_server.database()
