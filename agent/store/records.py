"""Frozen records: what the store hands out. No ORM row ever leaves :mod:`agent.store`.

JSON-valued fields are read-only mappings (``MappingProxyType``) so a record cannot be mutated by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "AuditEntry",
    "AuditKind",
    "CandidateState",
    "ChampionState",
    "Cycle",
    "CycleCandidate",
    "CycleState",
    "DecisionRecord",
    "Feedback",
    "Lease",
    "MetricSample",
    "ModelVersion",
    "OperatorCommand",
    "ServingInterval",
    "UsageRecord",
    "VersionStatus",
]


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"
    RETIRED = "retired"
    REJECTED = "rejected"


class CycleState(StrEnum):
    """The cycle state machine: OBSERVE → PLAN → TRAIN → VALIDATE → (CANARY) → PROMOTE → PROMOTED | REJECTED |
    HELD (+ FAILED). HELD: the gate left the decision to an operator (the candidate stays a candidate)."""

    OBSERVE = "observe"
    PLAN = "plan"
    TRAIN = "train"
    VALIDATE = "validate"
    CANARY = "canary"  # the candidate serves a share of live traffic before promotion (agent/daemon/canary.py)
    PROMOTE = "promote"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    HELD = "held"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (CycleState.PROMOTED, CycleState.REJECTED, CycleState.HELD, CycleState.FAILED)


NON_TERMINAL_STATES = tuple(s for s in CycleState if not s.terminal)


class CandidateState(StrEnum):
    """One candidate of a cycle that trains several at once: PLANNED → TRAINED | FAILED; TRAINED → CHOSEN (it
    passed the corrected gate and was picked; the cycle's state says whether it was promoted, held or stopped by
    the canary) | REJECTED."""

    PLANNED = "planned"
    TRAINED = "trained"
    FAILED = "failed"
    REJECTED = "rejected"
    CHOSEN = "chosen"


class AuditKind(StrEnum):
    # A version started serving (promotion, rollback, bootstrap); its epoch is the new champion epoch.
    SERVE = "serve"
    PIN = "pin"
    UNPIN = "unpin"
    QUARANTINE = "quarantine"
    OVERRIDE = "override"
    COMMAND = "command"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    id: str
    parent_id: str | None
    base_fingerprint: str
    adapter_kind: str
    adapter_config: Mapping[str, Any]
    artifact_path: str
    sha256: str
    status: VersionStatus
    metrics: Mapping[str, Any]
    created_at: datetime
    cycle_id: int | None
    was_champion: bool
    pruned: bool

    def numeric_metrics(self) -> dict[str, float]:
        """The metrics that are numbers (``metrics`` also holds text and flags), as floats for gauges."""
        return {
            k: float(v) for k, v in self.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }


@dataclass(frozen=True, slots=True)
class Cycle:
    id: int
    state: CycleState
    trigger_reasons: tuple[str, ...]
    recipe: Mapping[str, Any]
    plan: Mapping[str, Any]
    backend: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: str | None
    owner: str | None
    candidate_id: str | None
    parent_id: str | None
    champion_epoch_seen: int | None
    resumes: int


@dataclass(frozen=True, slots=True)
class CycleCandidate:
    """A candidate of a cycle that trains several at once (``slot`` 1 is the cycle's own recipe and plan).

    ``outcome``: why it was rejected or failed, or why it was chosen; ``evidence``: its evaluation and its part in
    the selection (mean, gain, p-value, Holm rank and level).
    """

    cycle_id: int
    slot: int
    recipe: Mapping[str, Any]
    plan: Mapping[str, Any]
    state: CandidateState
    version_id: str | None
    outcome: str | None
    evidence: Mapping[str, Any]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MetricSample:
    id: int
    name: str
    value: float
    labels: Mapping[str, str]
    at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A policy decision. ``reasons`` holds JSON values: plain strings or ``Reason.to_dict()`` mappings."""

    id: int
    kind: str
    action: str
    reasons: tuple[Any, ...]
    evidence: Mapping[str, Any]
    at: datetime
    cycle_id: int | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    kind: AuditKind
    version_id: str | None
    previous_id: str | None
    epoch: int | None
    actor: str
    reason: str
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ServingInterval:
    """Which version served from when to when (``until`` is None while it still serves), and who moved it;
    ``version_id`` None: the base model served (no usable champion)."""

    version_id: str | None
    epoch: int
    served_from: datetime
    served_until: datetime | None
    moved_by: str
    reason: str


@dataclass(frozen=True, slots=True)
class OperatorCommand:
    id: int
    key: str
    kind: str
    args: Mapping[str, Any]
    actor: str
    created_at: datetime
    applied_at: datetime | None
    ok: bool | None
    result: str | None


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str | None
    epoch: int
    acquired_at: datetime | None
    heartbeat_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ChampionState:
    version_id: str | None
    epoch: int
    pinned: bool
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One served request: what was asked, what the version answered, how long it took.

    ``messages`` and ``answers`` are empty when the server runs with ``serve.usage_content = false``;
    ``status`` is the HTTP status sent (a request cut short by a timeout or a disconnect still has one).
    """

    request_id: str
    at: datetime
    version_id: str
    status: int
    error: str | None
    messages: tuple[Mapping[str, Any], ...]
    answers: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    sampling: Mapping[str, Any]
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Feedback:
    """A client's judgement of a served request: a score, a correct answer, or both."""

    id: int
    request_id: str
    version_id: str
    at: datetime
    score: float | None
    correct_answer: str | None
