"""A throwaway PostgreSQL server for the tests: started by the first test that asks, gone at session end.

The server is Debian's (initdb and pg_ctl from /usr/lib/postgresql/<major>/bin, the newest
major installed), run on a temporary directory and a free port, listening on 127.0.0.1 only,
its unix socket inside that directory, with fsync off. Initdb refuses to run as root, so as
root every server command goes through `runuser -u postgres --` and the directory belongs
to postgres.

Fixtures (tests/conftest.py imports them):
- `pg_server` (session): the running `PostgresServer`;
- `pg_server_url` (session): its maintenance database's URL, postgresql://postgres@127.0.0.1:PORT/postgres;
- `pg_url` (function): the URL of a fresh, empty database (crawl_<n>) for one test.

Without PostgreSQL the tests that use these fixtures skip, except in CI (the environment
variable CI set), where they fail: CI installs PostgreSQL, so a missing server there is a fault.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the Debian package's system user, which runs the server when we are root
START_ATTEMPTS = 3  # a free port can be taken by someone else between probing and listening
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be run here; the message says why."""


def find_bindir(root: Path | None = None) -> Path:
    """The bin directory of the newest PostgreSQL major under Debian's root that has initdb and pg_ctl."""
    root = root or DEBIAN_ROOT
    majors: list[tuple[tuple[int, ...], Path]] = []
    if root.is_dir():
        for entry in root.iterdir():
            bindir = entry / "bin"
            is_major = re.fullmatch(r"\d+(\.\d+)?", entry.name) is not None
            if is_major and (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
                majors.append((tuple(int(part) for part in entry.name.split(".")), bindir))
    if not majors:
        raise PostgresUnavailable(
            f"PostgreSQL is not installed (no {root}/<major>/bin/initdb); apt-get install postgresql"
        )
    return max(majors)[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, owned by the test session."""

    bindir: Path
    root: Path  # the temporary directory: data/, the socket and the log
    port: int = 0
    as_user: str | None = None  # run server commands as this user (we are root)
    settings: dict[str, str] = field(default_factory=dict)  # extra `-c name=value` server settings
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    # ---- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def start(cls, bindir: Path | None = None, settings: dict[str, str] | None = None) -> PostgresServer:
        """initdb a new cluster in a fresh temporary directory and start it on a free port, with
        any extra server settings (e.g. shared_preload_libraries for a bench's profile)."""
        bindir = bindir or find_bindir()
        as_user = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresUnavailable(f"running as root, but no {SERVER_USER!r} user to run initdb") from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, but runuser (util-linux) is missing")
            as_user = SERVER_USER
        # Not under pytest's tmp_path: its parents are private to root, and the server's user must reach the socket.
        root = Path(tempfile.mkdtemp(prefix="crawler-pg-"))
        server = cls(bindir, root, as_user=as_user, settings=dict(settings or {}))
        try:
            if as_user is not None:
                os.chown(root, account.pw_uid, account.pw_gid)
            server._initdb()
            server._start_on_free_port()
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A server binary, as the server's user when we are root; its output kept for the error message."""
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user is not None:
            command = ["runuser", "-u", self.as_user, "--", *command]
        # The server's user may not be allowed into our working directory.
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, check=False)

    def _initdb(self) -> None:
        done = self._run(
            "initdb", "-D", str(self.data_dir), "-U", SERVER_USER, "-A", "trust",
            "--no-sync", "-E", "UTF8", "--locale", "C",
        )  # fmt: skip
        if done.returncode != 0:
            output = done.stderr.strip() or done.stdout.strip()
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {output}")

    def _start_on_free_port(self) -> None:
        failure = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-k {self.root}",
                    "-c listen_addresses=127.0.0.1",
                    # A test database is thrown away: durability only costs time.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    *(f"-c {name}={value}" for name, value in self.settings.items()),
                ]
            )
            done = self._run(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", str(START_TIMEOUT),
                "-o", options, "start",
            )  # fmt: skip
            if done.returncode == 0:
                return
            failure = self._log_tail() or done.stderr.strip() or done.stdout.strip()
            self._kill_postmaster()
        raise PostgresUnavailable(f"pg_ctl start failed {START_ATTEMPTS} times; last: {failure}")

    def _log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def postmaster_pid(self) -> int | None:
        """The running server's pid, from its postmaster.pid file."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster if pg_ctl could not stop it; its children exit once it is gone."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server at once (nothing in it is worth a checkpoint) and remove its directory."""
        if self.data_dir.is_dir() and self.postmaster_pid() is not None:
            done = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
            if done.returncode != 0:
                self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- databases ---------------------------------------------------------------------------

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE name (crawl_<n> when None); returns its URL."""
        name = name or f"crawl_{next(self._names)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        # psql over the socket rather than a Python driver, so the fixture works whichever driver the code uses.
        done = subprocess.run(
            [
                str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
                "-p", str(self.port), "-U", SERVER_USER, "-d", "postgres",
                "-c", f"CREATE DATABASE {name} STRATEGY FILE_COPY",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE {name} failed: {done.stderr.strip()}")
        return self.url_for(name)


def _unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where the PostgreSQL tests must run (.ci/run installs the server)."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL server for the whole session."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable skips or fails
    # Teardown runs even when tests fail; atexit covers a session that ends without it.
    atexit.register(server.stop)
    try:
        yield server
    finally:
        server.stop()
        atexit.unregister(server.stop)


@pytest.fixture(scope="session")
def pg_server_url(pg_server: PostgresServer) -> str:
    """postgresql://postgres@127.0.0.1:PORT/postgres, the server's maintenance database."""
    return pg_server.url


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """The URL of a new, empty database for this test alone."""
    return pg_server.create_database()
