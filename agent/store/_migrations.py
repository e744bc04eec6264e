"""Versioned schema migrations: a ``schema_version`` table and ordered steps.

A step is applied in one transaction (DDL is transactional on SQLite and PostgreSQL) together with its
``schema_version`` row, so a crash leaves the schema either before or after the step. Concurrent start-ups
serialize on the SQLite write lock or a PostgreSQL advisory lock and re-read the version inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, insert, inspect, select, text, update

from agent.store._db import MIGRATION_LOCK_KEY, Database
from agent.store._tables import (
    SCHEMA_V1_TABLES,
    SCHEMA_V3_TABLES,
    SCHEMA_V4_TABLES,
    ChampionRow,
    CycleRow,
    LeaseRow,
    SchemaVersionRow,
)
from agent.store.errors import SchemaTooNewError

Step = Callable[[Connection, datetime], None]

LEADER_LEASE = "leader"

_AUDIT_GUARD_SQLITE = [
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]
_AUDIT_GUARD_POSTGRES = [
    "CREATE FUNCTION qtha_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION qtha_audit_log_append_only()",
]


def _v1_initial(conn: Connection, now: datetime) -> None:
    for table in SCHEMA_V1_TABLES:
        table.__table__.create(conn)  # type: ignore[attr-defined]
    guards = _AUDIT_GUARD_POSTGRES if conn.dialect.name == "postgresql" else _AUDIT_GUARD_SQLITE
    for statement in guards:
        conn.exec_driver_sql(statement)
    # Seed the singleton rows so that every later write is an UPDATE … WHERE epoch = :seen (a CAS), never a
    # racy insert-if-absent.
    conn.execute(insert(ChampionRow.__table__).values(id=1, version_id=None, epoch=0, pinned=False))
    conn.execute(insert(LeaseRow.__table__).values(name=LEADER_LEASE, holder=None, epoch=0))


# The planner's bookkeeping keys that v1 kept inside a cycle's recipe, and their place in the v2 plan record.
_V1_PLAN_KEYS = {"_trial": "trial", "_planned_cpu_s": "planned_cpu_s", "_cpu_calibration": "cpu_calibration",
                 "_spent_shots": "planned_shots", "_spent_money": "planned_money"}


def _v2_cycle_plan_and_held(conn: Connection, now: datetime) -> None:
    """Cycles get a ``plan`` column (the planner's bookkeeping moves out of the recipe) and a HELD state
    (v1 wrote held cycles as REJECTED with an outcome starting "held")."""
    cycles = CycleRow.__table__  # type: ignore[attr-defined]
    if "plan" not in {c["name"] for c in inspect(conn).get_columns("cycles")}:  # v1 built from a newer model
        conn.execute(text("ALTER TABLE cycles ADD COLUMN plan JSON"))
    for row in conn.execute(select(cycles.c.id, cycles.c.recipe, cycles.c.state, cycles.c.outcome)).all():
        recipe = dict(row.recipe or {})
        plan = {new: recipe.pop(old) for old, new in _V1_PLAN_KEYS.items() if old in recipe}
        if plan and "trial" in plan:
            plan["source"] = "learner"
        state = "held" if row.state == "rejected" and (row.outcome or "").startswith("held") else row.state
        conn.execute(update(cycles).where(cycles.c.id == row.id).values(recipe=recipe, plan=plan, state=state))


def _v3_usage(conn: Connection, now: datetime) -> None:
    # The server's usage log and its feedback (issue 14); new tables only, so older rows are untouched.
    for table in SCHEMA_V3_TABLES:
        table.__table__.create(conn)  # type: ignore[attr-defined]


def _v4_cycle_candidates(conn: Connection, now: datetime) -> None:
    # The candidates a cycle trains at once (issue 18); a new table only, so older cycles are untouched.
    for table in SCHEMA_V4_TABLES:
        table.__table__.create(conn)  # type: ignore[attr-defined]


# Ordered; index i holds the step that brings the schema to version i + 1. Append only, never edit a step.
STEPS: tuple[Step, ...] = (_v1_initial, _v2_cycle_plan_and_held, _v3_usage, _v4_cycle_candidates)
LATEST_VERSION = len(STEPS)


def current_version(conn: Connection) -> int:
    """The schema version of the database behind ``conn`` (0 for an empty database)."""
    table = SchemaVersionRow.__table__
    if not conn.dialect.has_table(conn, table.name):  # type: ignore[attr-defined]
        return 0
    found = conn.execute(select(text("max(version)")).select_from(table)).scalar()
    return int(found or 0)


def migrate(db: Database, now: datetime) -> int:
    """Brings the schema to :data:`LATEST_VERSION`.

    Returns:
        The schema version after migrating.

    Raises:
        SchemaTooNewError: the database has a newer schema than this program knows.
    """
    while True:
        with db.tx(lock=MIGRATION_LOCK_KEY) as conn:
            version = current_version(conn)
            if version > LATEST_VERSION:
                raise SchemaTooNewError(
                    f"database schema version {version} is newer than this qtha understands (up to "
                    f"{LATEST_VERSION}); upgrade qtha, or point database.url at a database of this version"
                )
            if version == LATEST_VERSION:
                return version
            if version == 0:
                SchemaVersionRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]
            STEPS[version](conn, now)
            conn.execute(insert(SchemaVersionRow.__table__).values(version=version + 1, applied_at=now))
