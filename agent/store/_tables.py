"""SQLModel table definitions (schema version 4). Private: only the store's modules use them.

The tables live in their own SQLAlchemy registry, so nothing else that defines SQLModel tables can leak into
our migrations. A change to a table here must come with a new migration step in ``_migrations.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Float, Index, Integer, String, Text, text
from sqlalchemy.orm import registry
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones: store naive UTC, re-attach)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store; pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Base(SQLModel, registry=registry()):
    pass


def _json() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


def _time(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class SchemaVersionRow(_Base, table=True):
    __tablename__ = "schema_version"
    version: int = Field(primary_key=True)
    applied_at: datetime = _time()


class VersionRow(_Base, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one champion row, whatever the application does.
        Index(
            "one_champion_version",
            "status",
            unique=True,
            sqlite_where=text("status = 'champion'"),
            postgresql_where=text("status = 'champion'"),
        ),
    )
    id: str = Field(primary_key=True, max_length=128)
    parent_id: str | None = Field(default=None, foreign_key="model_versions.id", max_length=128)
    base_fingerprint: str = Field(max_length=256)
    adapter_kind: str = Field(max_length=64)
    adapter_config: dict[str, Any] = _json()
    artifact_path: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    status: str = Field(max_length=16, index=True)
    metrics: dict[str, Any] = _json()
    created_at: datetime = _time(index=True)
    cycle_id: int | None = Field(default=None, index=True)
    was_champion: bool = Field(default=False)
    pruned: bool = Field(default=False)


class ChampionRow(_Base, table=True):
    """A single row (id = 1): the champion pointer and its epoch, the target of the promotion CAS."""

    __tablename__ = "champion"
    id: int = Field(primary_key=True)
    version_id: str | None = Field(default=None, foreign_key="model_versions.id", max_length=128)
    epoch: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default=text("0")))
    pinned: bool = Field(default=False)
    updated_at: datetime | None = _time(nullable=True)


class CycleRow(_Base, table=True):
    __tablename__ = "cycles"
    id: int | None = Field(default=None, primary_key=True)
    state: str = Field(max_length=16, index=True)
    # 1 while the cycle is not terminal, NULL afterwards: UNIQUE (NULLs are distinct on SQLite and PostgreSQL)
    # makes "at most one running cycle" a database guarantee across processes and hosts.
    running: int | None = Field(default=None, sa_column=Column(Integer, unique=True, nullable=True))
    trigger_reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    recipe: dict[str, Any] = _json()
    # The planner's bookkeeping (learner trial, planned spend, calibration), kept apart from the recipe (v2).
    plan: dict[str, Any] = _json()
    backend: str = Field(max_length=64)
    started_at: datetime = _time()
    updated_at: datetime = _time()
    finished_at: datetime | None = _time(nullable=True)
    outcome: str | None = Field(default=None, max_length=4096)
    error: str | None = Field(default=None, max_length=8192)
    owner: str | None = Field(default=None, max_length=256)
    candidate_id: str | None = Field(default=None, max_length=128)
    parent_id: str | None = Field(default=None, max_length=128)
    champion_epoch_seen: int | None = Field(default=None)
    resumes: int = Field(default=0)


class CandidateRow(_Base, table=True):
    """Schema v4: one of the candidates a cycle trains at once (a cycle with one candidate has no rows: the cycle
    row is its record). ``slot`` 1 is the cycle's own recipe and plan; ``version_id`` is set once trained."""

    __tablename__ = "cycle_candidates"
    cycle_id: int = Field(foreign_key="cycles.id", primary_key=True)
    slot: int = Field(primary_key=True)
    recipe: dict[str, Any] = _json()
    plan: dict[str, Any] = _json()
    state: str = Field(max_length=16)
    version_id: str | None = Field(default=None, max_length=128)
    outcome: str | None = Field(default=None, max_length=8192)
    evidence: dict[str, Any] = _json()
    updated_at: datetime = _time()


class MetricRow(_Base, table=True):
    __tablename__ = "metric_samples"
    __table_args__ = (Index("metric_name_time", "name", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=256)
    value: float
    labels: dict[str, Any] = _json()
    at: datetime = _time()
    source: str = Field(max_length=128)


class DecisionRow(_Base, table=True):
    __tablename__ = "decisions"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=64, index=True)
    action: str = Field(max_length=64)
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    evidence: dict[str, Any] = _json()
    at: datetime = _time(index=True)
    cycle_id: int | None = Field(default=None, foreign_key="cycles.id")


class AuditRow(_Base, table=True):
    """Append-only (triggers refuse UPDATE and DELETE). A promotion's epoch appears in exactly one serve row."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(
            "one_serve_per_epoch",
            "epoch",
            unique=True,
            sqlite_where=text("kind = 'serve'"),
            postgresql_where=text("kind = 'serve'"),
        ),
    )
    seq: int | None = Field(default=None, primary_key=True)
    at: datetime = _time(index=True)
    kind: str = Field(max_length=32, index=True)
    version_id: str | None = Field(default=None, max_length=128)
    previous_id: str | None = Field(default=None, max_length=128)
    epoch: int | None = Field(default=None)
    actor: str = Field(max_length=256)
    reason: str = Field(max_length=4096)
    details: dict[str, Any] = _json()


class CommandRow(_Base, table=True):
    __tablename__ = "operator_commands"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=256, sa_column=Column(String(256), unique=True, nullable=False))
    kind: str = Field(max_length=64)
    args: dict[str, Any] = _json()
    actor: str = Field(max_length=256)
    created_at: datetime = _time(index=True)
    applied_at: datetime | None = _time(nullable=True)
    ok: bool | None = Field(default=None)
    result: str | None = Field(default=None, max_length=8192)


class LeaseRow(_Base, table=True):
    __tablename__ = "leases"
    name: str = Field(primary_key=True, max_length=64)
    holder: str | None = Field(default=None, max_length=256)
    epoch: int = Field(default=0)
    acquired_at: datetime | None = _time(nullable=True)
    heartbeat_at: datetime | None = _time(nullable=True)
    expires_at: datetime | None = _time(nullable=True)


class OverrideRow(_Base, table=True):
    __tablename__ = "policy_overrides"
    key: str = Field(primary_key=True, max_length=256)
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    actor: str = Field(max_length=256)
    updated_at: datetime = _time()


class UsageRow(_Base, table=True):
    """Schema v3: one served request and its answers (written by ``qtha serve``, read by the daemon).

    ``seq`` orders records by arrival and drives the size cap; ``size_bytes`` is the record's approximate
    serialized size, so the cap can be enforced without measuring the database file.
    """

    __tablename__ = "usage_log"
    __table_args__ = (Index("usage_version_time", "version_id", "at"),)
    seq: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    at: datetime = _time(index=True)
    version_id: str = Field(max_length=128)
    status: int = Field(default=200)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    messages: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    answers: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    finish_reasons: list[Any] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    sampling: dict[str, Any] = _json()
    latency_s: float = Field(default=0.0, sa_column=Column(Float, nullable=False))
    ttft_s: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    prompt_tokens: int = Field(default=0)
    completion_tokens: int = Field(default=0)
    size_bytes: int = Field(default=0)


class FeedbackRow(_Base, table=True):
    """Schema v3: a score or a correct answer given for a served request (several per request allowed)."""

    __tablename__ = "usage_feedback"
    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    version_id: str = Field(max_length=128, index=True)
    at: datetime = _time(index=True)
    score: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    correct_answer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


METADATA = _Base.metadata
SCHEMA_V1_TABLES = (
    VersionRow,
    ChampionRow,
    CycleRow,
    MetricRow,
    DecisionRow,
    AuditRow,
    CommandRow,
    LeaseRow,
    OverrideRow,
)
SCHEMA_V3_TABLES = (UsageRow, FeedbackRow)
SCHEMA_V4_TABLES = (CandidateRow,)
