"""Shared agent fixtures: a real PostgreSQL server, a fake clock, fresh stores and state directories.

The PostgreSQL server is started by the test session itself (Debian's server binaries, a temporary data
directory owned by the ``postgres`` user, loopback only, a free port, ``fsync=off``) and each test gets a fresh
database on it. Without the binaries the PostgreSQL variants skip and say why.
"""

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
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.store import Store, open_store
from tests.support.tools import skip_missing_tool

_PG_BIN_GLOBS = ("/usr/lib/postgresql/*/bin",)
_SHARED_DB = "qtha_tests"


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
        self._admin(_SHARED_DB, f'CREATE SCHEMA "{schema}"')
        return f"{self.url(_SHARED_DB)}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skips if the server binaries are not installed)."""
    bindir = _find_pg_bin()
    if bindir is None:
        skip_missing_tool("PostgreSQL server (initdb, pg_ctl)", "apt-get install postgresql")
    run_as: dict[str, object] = {}
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            skip_missing_tool(
                "postgres user",
                "running as root, the server needs a 'postgres' user: apt-get install postgresql",
            )
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
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
        subprocess.run(
            [bindir / "pg_ctl", "-D", datadir, "-o", options, "-l", base / "server.log", "-w", "start"],
            **common,  # type: ignore[arg-type]
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}")
    server = PostgresServer("127.0.0.1", port, "postgres", datadir, itertools.count())
    try:
        server._admin("postgres", f'CREATE DATABASE "{_SHARED_DB}"')
        yield server
    finally:
        subprocess.run(
            [bindir / "pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"],
            cwd=base,
            capture_output=True,
            **run_as,  # type: ignore[arg-type]
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def sqlite_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'qtha.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """A URL of a fresh, empty database: SQLite, and a new schema on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return sqlite_url
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.fresh_url()


@pytest.fixture
def store(store_url: str, fake_clock: FakeClock) -> Iterator[Store]:
    """A fresh, migrated store on each backend, with the fake clock."""
    opened = open_store(store_url, clock=fake_clock)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(sqlite_url: str, fake_clock: FakeClock) -> Iterator[Store]:
    """A fresh, migrated SQLite store with the fake clock."""
    opened = open_store(sqlite_url, clock=fake_clock)
    yield opened
    opened.close()
