"""Row → frozen record conversion: the one place where database rows turn into the store's records.

Column names equal record field names; only the typed fields (enums, JSON, booleans) need a conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import RowMapping

from agent.store.records import (
    AuditEntry,
    AuditKind,
    CandidateState,
    ChampionState,
    Cycle,
    CycleCandidate,
    CycleState,
    DecisionRecord,
    Feedback,
    Lease,
    MetricSample,
    ModelVersion,
    OperatorCommand,
    UsageRecord,
    VersionStatus,
)

R = TypeVar("R")


def frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(frozen(v) if isinstance(v, Mapping) else v for v in value or ())


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _converter(cls: type[R], **typed: Callable[[Any], Any]) -> Callable[[RowMapping], R]:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def convert(row: RowMapping) -> R:
        return cls(**{n: typed[n](row[n]) if n in typed else row[n] for n in names})

    return convert


version = _converter(
    ModelVersion,
    adapter_config=frozen,
    metrics=frozen,
    status=VersionStatus,
    was_champion=bool,
    pruned=bool,
)
champion = _converter(ChampionState, epoch=int, pinned=bool)
cycle = _converter(
    Cycle, state=CycleState, trigger_reasons=_tuple, recipe=frozen, plan=frozen, resumes=int
)
candidate = _converter(CycleCandidate, recipe=frozen, plan=frozen, state=CandidateState, evidence=frozen)
metric = _converter(MetricSample, value=float, labels=frozen)
decision = _converter(DecisionRecord, reasons=_tuple, evidence=frozen)
audit = _converter(AuditEntry, kind=AuditKind, details=frozen)
command = _converter(OperatorCommand, args=frozen, ok=_optional_bool)
lease = _converter(Lease, epoch=int)
usage = _converter(
    UsageRecord,
    messages=_tuple,
    answers=tuple,
    finish_reasons=tuple,
    sampling=frozen,
    latency_s=float,
    status=int,
    prompt_tokens=int,
    completion_tokens=int,
)
feedback = _converter(Feedback)
