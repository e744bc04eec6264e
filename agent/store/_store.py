"""The :class:`Store` facade: one database, one clock, one object per table group."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError

from agent.clock import Clock, SystemClock
from agent.store import _migrations
from agent.store._audit import Audit
from agent.store._candidates import Candidates
from agent.store._champion import Champion
from agent.store._cycles import Cycles
from agent.store._db import Database, create_store_engine
from agent.store._lease import Leases, fence_for
from agent.store._observations import Decisions, Metrics
from agent.store._operator import Commands, Overrides
from agent.store._usage import Usage
from agent.store._versions import Versions
from agent.store.errors import DatabaseUnavailableError, DatabaseUrlError, SchemaTooNewError, StoreError
from agent.store.records import Lease


class Store:
    """The daemon's database.

    Build one with :func:`open_store`; ``Store(engine)`` wraps an engine whose schema is already current.

    Attributes:
        versions: model versions (:class:`~agent.store.Versions`).
        champion: the champion pointer, promotion, rollback, pin (:class:`~agent.store.Champion`).
        cycles: cycles and their transitions (:class:`~agent.store.Cycles`).
        candidates: the candidates of cycles that train several at once (:class:`~agent.store.Candidates`).
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
        self.candidates = Candidates(self._db, self.clock)
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

    def fence_writes(self, token: Callable[[], Lease | None]) -> None:
        """From now on, the writes that matter (champion moves and pin, cycle transitions, rejecting or pruning a
        version) commit only while ``token()`` is the current leader term; otherwise they raise
        :class:`~agent.store.StaleEpochError` and change nothing. ``token`` returns this process's lease (None when
        it does not lead). A store that is never fenced (tools, tests, a single process) writes as before.
        """
        self._db.fence = fence_for(token, self.clock)

    def check_fence(self) -> None:
        """Raises :class:`~agent.store.StaleEpochError` when the store is fenced and this process's lease term is not
        current (no-op on an unfenced store): ask before an act that is no database write but a judgement (moving
        a version's files to the quarantine)."""
        with self._db.tx(write=False, fenced=True):
            pass

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
    try:
        engine = create_store_engine(url, echo=echo)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DatabaseUrlError(_url_problem(url, exc)) from exc
    except OSError as exc:  # the SQLite file's directory cannot be created
        raise DatabaseUnavailableError(_unavailable(url, exc)) from exc
    try:
        _migrations.migrate(Database(engine), clock.now())
        return Store(engine, clock=clock)
    except (OperationalError, InterfaceError) as exc:
        engine.dispose()
        if "locked" in str(exc).lower():
            raise  # a busy SQLite file: the caller retries or says "locked"
        raise DatabaseUnavailableError(_unavailable(url, exc)) from exc
    except BaseException:
        engine.dispose()
        raise


def safe_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(cause).__name__


def _url_problem(url: str, exc: BaseException) -> str:
    if isinstance(exc, NoSuchModuleError):
        return (
            f"database.url {safe_url(url)}: its driver is not installed ({_first_line(exc)}); "
            "use postgresql+psycopg://... (psycopg is a dependency of qtha) or sqlite:///<path>"
        )
    if isinstance(exc, ArgumentError):
        problem = "not a database URL"
    else:  # create_store_engine's ValueError quotes the raw URL (password included): name the backend only
        problem = f"the {make_url(url).get_backend_name()} backend is not supported"
    return (
        f"database.url {safe_url(url)}: {problem}; use sqlite:///<path> or postgresql+psycopg://user@host:port/db"
    )


def _unavailable(url: str, exc: BaseException) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return (
            f"cannot open the SQLite database {parsed.database} ({_first_line(exc)}); "
            "check that its directory exists and is writable, or set database.url"
        )
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    return (
        f"cannot reach PostgreSQL at {where} ({_first_line(exc)}); "
        "start the server, check its address and credentials, or fix database.url"
    )
