"""The :class:`Store` facade: one database, one clock, one object per table group."""

from __future__ import annotations

from sqlalchemy import Engine

from agent.clock import Clock, SystemClock
from agent.store import _migrations
from agent.store._audit import Audit
from agent.store._champion import Champion
from agent.store._cycles import Cycles
from agent.store._db import Database, create_store_engine
from agent.store._lease import Leases
from agent.store._observations import Decisions, Metrics
from agent.store._operator import Commands, Overrides
from agent.store._usage import Usage
from agent.store._versions import Versions
from agent.store.errors import SchemaTooNewError, StoreError


class Store:
    """The daemon's database.

    Build one with :func:`open_store`; ``Store(engine)`` wraps an engine whose schema is already current.

    Attributes:
        versions: model versions (:class:`~agent.store.Versions`).
        champion: the champion pointer, promotion, rollback, pin (:class:`~agent.store.Champion`).
        cycles: cycles and their transitions (:class:`~agent.store.Cycles`).
        audit: the append-only audit log (:class:`~agent.store.Audit`).
        metrics: metric samples (:class:`~agent.store.Metrics`).
        decisions: policy decisions (:class:`~agent.store.Decisions`).
        commands: operator commands (:class:`~agent.store.Commands`).
        overrides: policy overrides (:class:`~agent.store.Overrides`).
        leases: the leader lease (:class:`~agent.store.Leases`).
        usage: the server's usage log and feedback (:class:`~agent.store.Usage`).

    Example:
        >>> store = open_store("sqlite:///:memory:")
        >>> store.champion.get().epoch
        0
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._db = Database(engine)
        with self._db.tx(write=False) as conn:
            version = _migrations.current_version(conn)
        if version != _migrations.LATEST_VERSION:
            if version > _migrations.LATEST_VERSION:
                raise SchemaTooNewError(
                    f"database schema version {version} is newer than this qtha understands (up to "
                    f"{_migrations.LATEST_VERSION}); upgrade qtha"
                )
            raise StoreError(
                f"database schema version {version} is older than {_migrations.LATEST_VERSION}; "
                "open it with open_store(), which migrates"
            )
        self.versions = Versions(self._db, self.clock)
        self.champion = Champion(self._db, self.clock)
        self.cycles = Cycles(self._db, self.clock)
        self.audit = Audit(self._db, self.clock)
        self.metrics = Metrics(self._db, self.clock)
        self.decisions = Decisions(self._db, self.clock)
        self.commands = Commands(self._db, self.clock)
        self.overrides = Overrides(self._db, self.clock)
        self.leases = Leases(self._db, self.clock)
        self.usage = Usage(self._db, self.clock)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    @property
    def engine(self) -> Engine:
        return self._db.engine

    def schema_version(self) -> int:
        with self._db.tx(write=False) as conn:
            return _migrations.current_version(conn)

    def close(self) -> None:
        """Closes pooled connections (releases any PostgreSQL session state)."""
        self._db.engine.dispose()


def open_store(url: str, *, clock: Clock | None = None, echo: bool = False) -> Store:
    """Connects to ``url``, migrates the schema to the latest version and returns the store.

    Args:
        url: ``sqlite:///<path>`` (WAL) or ``postgresql+psycopg://user@host:port/db``.
        clock: time source (default: the system clock).
        echo: log SQL statements.

    Raises:
        SchemaTooNewError: the database was migrated by a newer qtha.
    """
    clock = clock or SystemClock()
    engine = create_store_engine(url, echo=echo)
    try:
        _migrations.migrate(Database(engine), clock.now())
        return Store(engine, clock=clock)
    except BaseException:
        engine.dispose()
        raise
