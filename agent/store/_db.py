"""Engine creation and transactions for SQLite (WAL) and PostgreSQL.

SQLite: the Python driver's own transaction handling is switched off so that write transactions can start with
``BEGIN IMMEDIATE`` (take the write lock up front; a deferred transaction that later upgrades to a writer gets
``SQLITE_BUSY`` without waiting for the busy timeout, which would surface as spurious failures under contention).
PostgreSQL: writers that must serialize (promotion, migration) also take a transaction-scoped advisory lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from agent.clock import Clock

# Keys of pg_advisory_xact_lock; arbitrary but fixed (the ASCII of "qtha" plus a small tag).
PROMOTION_LOCK_KEY = 0x71746861_0001
MIGRATION_LOCK_KEY = 0x71746861_0002
LEASE_LOCK_KEY = 0x71746861_0003

SQLITE_BUSY_TIMEOUT_S = 30.0


def create_store_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` with our connection settings (WAL, busy timeout, foreign keys on SQLite).

    Args:
        url: ``sqlite:///path.db`` or ``postgresql+psycopg://user@host:port/db``.
        echo: log every statement.

    Raises:
        ValueError: the URL names a backend other than SQLite or PostgreSQL.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    raise ValueError(
        f"unsupported database URL {url!r}: use sqlite:///<path> or postgresql+psycopg://user@host/db"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    _enable_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    # FULL: a committed promotion survives power loss too, not only a process crash; one extra fsync per
    # commit is nothing at our write rate.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _enable_wal(cursor: Any, *, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """Switches the database to WAL, waiting out other connections that hold it.

    Changing the journal mode needs the database to itself, and SQLite answers "database is locked" at once,
    without the busy handler, when another connection is creating or converting the same new file: two daemons
    (or a daemon and the CLI) starting on a fresh state directory would see one of them fail. So retry, with
    back-off, for as long as the busy timeout.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.25)


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("qtha_write", True)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """An engine plus the one way this package opens transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # Set by Store.fence_writes(): checks, inside a fenced transaction, that the writer still leads.
        self.fence: Callable[[Connection], None] | None = None

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def tx(self, *, write: bool = True, lock: int | None = None, fenced: bool = False) -> Iterator[Connection]:
        """A transaction that commits on success and rolls back on any exception.

        Args:
            write: take the SQLite write lock at BEGIN (all writers should).
            lock: on PostgreSQL, a ``pg_advisory_xact_lock`` key held until the transaction ends.
            fenced: a write that matters (promotion, rollback, cycle state, judging a version): when the store
                is fenced, it commits only while the writer's lease term is current (StaleEpochError otherwise).
        """
        with self.engine.connect() as conn:
            conn.execution_options(qtha_write=write)
            with conn.begin():
                if lock is not None and self.is_postgres:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock})
                if fenced and self.fence is not None:
                    self.fence(conn)
                yield conn


class TableAccess:
    """Base of the store's per-table accessors: the database they read and write, the clock that stamps rows."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
