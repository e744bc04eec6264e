"""A throwaway PostgreSQL server: Debian's server binaries, a temporary data directory owned by the ``postgres``
user, loopback only, a free port, ``fsync=off``. Used by the test session (tests/agent/conftest.py) and by
``bench/store_load.py``; it imports no test framework."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SHARED_DB", "PostgresServer", "PostgresUnavailableError", "temporary_postgres"]

_PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin",)
SHARED_DB = "qtha_tests"


class PostgresUnavailableError(RuntimeError):
    """The server binaries (or the ``postgres`` user) are missing. ``what`` and ``how`` say which and how to fix."""

    def __init__(self, what: str, how: str) -> None:
        super().__init__(f"{what} is missing: {how}")
        self.what = what
        self.how = how


def _find_pg_bin() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    for pattern in _PG_BIN_GLOBS:
        for found in sorted(glob.glob(pattern), reverse=True):
            if (Path(found) / "initdb").exists():
                return Path(found)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    """A running server.

    ``fresh_url()`` gives a URL whose connections see only a new, empty schema (cheap: no database copy, which
    matters on a shared disk); ``create_database()`` a URL of a whole new database.
    """

    host: str
    port: int
    user: str
    datadir: Path
    _counter: itertools.count

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self, database: str, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, autocommit=True
        ) as conn:
            conn.execute(statement)

    def create_database(self) -> str:
        name = f"qtha_test_{os.getpid()}_{next(self._counter)}"
        self._admin("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def fresh_url(self) -> str:
        schema = f"t_{os.getpid()}_{next(self._counter)}"
        self._admin(SHARED_DB, f'CREATE SCHEMA "{schema}"')
        return f"{self.url(SHARED_DB)}?options=-csearch_path%3D{schema}"


@contextmanager
def temporary_postgres(*, max_connections: int = 200, fsync: bool = False) -> Iterator[PostgresServer]:
    """Starts a server for the duration of the block and removes it afterwards.

    Raises:
        PostgresUnavailableError: the server binaries, or (running as root) the ``postgres`` user, are missing.
        subprocess.CalledProcessError: initdb or pg_ctl failed (its output is in ``stderr``).
    """
    bindir = _find_pg_bin()
    if bindir is None:
        raise PostgresUnavailableError("PostgreSQL server (initdb, pg_ctl)", "apt-get install postgresql")
    run_as: dict[str, object] = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailableError(
                "postgres user", "running as root, the server needs a 'postgres' user: apt-get install postgresql"
            ) from None
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid}
    base = Path(tempfile.mkdtemp(prefix="qtha-pg-"))
    datadir = base / "data"
    if run_as:
        os.chown(base, run_as["user"], run_as["group"])  # type: ignore[arg-type]
    port = _free_port()
    common = {"cwd": base, "check": True, "capture_output": True, "text": True, **run_as}
    try:
        subprocess.run(
            [bindir / "initdb", "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            **common,  # type: ignore[arg-type]
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync={'on' if fsync else 'off'} "
            f"-c max_connections={max_connections}"
        )
        subprocess.run(
            [bindir / "pg_ctl", "-D", datadir, "-o", options, "-l", base / "server.log", "-w", "start"],
            **common,  # type: ignore[arg-type]
        )
    except subprocess.CalledProcessError:
        shutil.rmtree(base, ignore_errors=True)
        raise
    server = PostgresServer("127.0.0.1", port, "postgres", datadir, itertools.count())
    try:
        server._admin("postgres", f'CREATE DATABASE "{SHARED_DB}"')
        yield server
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"],
            cwd=base,
            capture_output=True,
            **run_as,  # type: ignore[arg-type]
        )
        shutil.rmtree(base, ignore_errors=True)
