"""Frozen records of what happened, the inputs of every policy (the agent converts its rows into these).

Convention: every metric is *higher is better* (accuracy, exact match, negative loss); the agent negates a loss
before handing it over. Every timestamp is timezone-aware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .decision import PolicyInputError, require_aware

__all__ = ["CycleOutcome", "CycleRecord", "Evaluation", "ExampleScore", "MetricSample", "Spend"]



class CycleOutcome(StrEnum):
    """How a cycle ended (``RUNNING`` while it runs). ``HELD``: the gate left the decision to an operator."""

    RUNNING = "running"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    HELD = "held"
    FAILED = "failed"



def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise PolicyInputError(f"{name} = {value!r} must be a finite number")


@dataclass(frozen=True)
class Spend:
    """Resources a cycle used (or is planned to use): CPU-seconds, quantum shots and money."""

    cpu_seconds: float = 0.0
    shots: int = 0
    money: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "shots", "money"):
            value = getattr(self, name)
            _finite(f"Spend.{name}", value)
            if value < 0:
                raise PolicyInputError(f"Spend.{name} = {value!r} must be >= 0")

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.cpu_seconds + other.cpu_seconds, self.shots + other.shots, self.money + other.money)

    def fits_within(self, limit: Spend) -> bool:
        """Whether every resource of this spend is at most the same resource of ``limit``."""
        return (
            self.cpu_seconds <= limit.cpu_seconds and self.shots <= limit.shots and self.money <= limit.money
        )

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_seconds": self.cpu_seconds, "shots": self.shots, "money": self.money}


@dataclass(frozen=True)
class MetricSample:
    """One evaluation of a model version on the recorded evaluation set (higher is better)."""

    at: datetime
    value: float
    version: str = ""

    def __post_init__(self) -> None:
        require_aware("MetricSample.at", self.at)
        _finite("MetricSample.value", self.value)


@dataclass(frozen=True)
class CycleRecord:
    """One training cycle: when it ran, how it ended, what it spent (planned spend while it runs).

    Attributes:
        started_at: when the cycle left OBSERVE.
        finished_at: when it ended; ``None`` while it runs.
        outcome: ``"running"`` while it runs, else how it ended; only ``"failed"`` counts for the breaker.
        spend: resources used (for a running cycle: reserved), counted against the day it started.
    """

    started_at: datetime
    finished_at: datetime | None = None
    outcome: CycleOutcome = CycleOutcome.RUNNING
    spend: Spend = field(default_factory=Spend)

    def __post_init__(self) -> None:
        require_aware("CycleRecord.started_at", self.started_at)
        try:
            object.__setattr__(self, "outcome", CycleOutcome(self.outcome))
        except ValueError:
            raise PolicyInputError(
                f"CycleRecord.outcome = {self.outcome!r}; use one of {[o.value for o in CycleOutcome]}"
            ) from None
        if (self.finished_at is None) != (self.outcome == "running"):
            raise PolicyInputError(
                f"CycleRecord outcome {self.outcome!r} with finished_at={self.finished_at!r}: a cycle is "
                "'running' exactly when it has no finished_at"
            )
        if self.finished_at is not None:
            require_aware("CycleRecord.finished_at", self.finished_at)
            if self.finished_at < self.started_at:
                raise PolicyInputError(
                    f"CycleRecord.finished_at = {self.finished_at.isoformat()} is before started_at = "
                    f"{self.started_at.isoformat()}"
                )

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


@dataclass(frozen=True)
class ExampleScore:
    """A model's score on one held-out example (higher is better), with the slice it belongs to."""

    example_id: str
    score: float
    slice: str = "all"

    def __post_init__(self) -> None:
        _finite(f"ExampleScore({self.example_id!r}).score", self.score)


@dataclass(frozen=True)
class Evaluation:
    """A model version's evaluation on the held-out set, its smoke test and its size.

    Attributes:
        version: the model version id.
        scores: one score per held-out example; ids must be unique.
        smoke_ok: whether the servability smoke test (load, generate, answer) passed.
        trainable_params: adapter parameters, for the parameter budget.
        smoke_detail: what the smoke test found (the failing probes), told in the reason.
    """

    version: str
    scores: tuple[ExampleScore, ...]
    smoke_ok: bool = True
    trainable_params: int = 0
    smoke_detail: str = ""

    def __post_init__(self) -> None:
        ids = [s.example_id for s in self.scores]
        if len(set(ids)) != len(ids):
            duplicated = sorted({i for i in ids if ids.count(i) > 1})
            raise PolicyInputError(f"Evaluation {self.version!r} repeats example ids {duplicated[:5]}")
        if self.trainable_params < 0:
            raise PolicyInputError(f"Evaluation.trainable_params = {self.trainable_params} must be >= 0")

    @property
    def mean(self) -> float:
        """Mean score (NaN when empty)."""
        return math.fsum(s.score for s in self.scores) / len(self.scores) if self.scores else math.nan
