"""Shared agent fixtures: a real PostgreSQL server, a fake clock, fresh stores and state directories.

The PostgreSQL server is started by the test session itself (Debian's server binaries, a temporary data
directory owned by the ``postgres`` user, loopback only, a free port, ``fsync=off``) and each test gets a fresh
database on it. Without the binaries the PostgreSQL variants skip and say why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.store import Store, open_store
from tests.support.postgres import PostgresServer, PostgresUnavailableError, temporary_postgres
from tests.support.tools import skip_missing_tool


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (skips if the server binaries are not installed)."""
    try:
        with temporary_postgres() as server:
            yield server
    except PostgresUnavailableError as exc:
        skip_missing_tool(exc.what, exc.how)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}")


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
