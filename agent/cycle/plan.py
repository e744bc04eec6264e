"""The planner's bookkeeping for one cycle, kept beside its recipe (``cycles.plan``), never inside it.

The recipe (:class:`policies.Recipe`) says how to train; the plan says where the recipe came from and what it
was expected to cost, so the budget, the cost calibration and the recipe learner read typed fields instead of
private keys mixed into the recipe.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import policies

__all__ = ["CyclePlan", "PlanSource"]


class PlanSource(StrEnum):
    """Who chose the recipe: the learner (its trial awaits the outcome), an operator (``cycle --now --recipe``)
    or the configuration (``[recipe] learn = false``: the cold-start recipe every time; the learner is not told)."""

    LEARNER = "learner"
    OPERATOR = "operator"
    CONFIG = "config"


@dataclass(frozen=True)
class CyclePlan:
    """Where a cycle's recipe came from and what it was planned to cost.

    Attributes:
        source: the learner or an operator override.
        trial: the learner's trial told this cycle's outcome (``None`` for an operator's recipe: it is told to
            the learner as a trial of its own, see :func:`policies.record_operator_recipe`).
        planned_cpu_s, planned_shots, planned_money: the cost model's estimate (charged while the cycle runs and
            when training measured nothing).
        cpu_calibration: the factor the cost model's CPU coefficients were scaled by for this estimate, so later
            calibrations divide it out instead of compounding it.
        candidates: how many candidates the cycle trains at once (more than one: each has a row of its own in
            ``Store.candidates`` with its own plan, and this plan reserves their spend together).
    """

    source: PlanSource = PlanSource.LEARNER
    trial: int | None = None
    planned_cpu_s: float = 0.0
    planned_shots: int = 0
    planned_money: float = 0.0
    cpu_calibration: float = 1.0
    candidates: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", PlanSource(self.source))
        for name in ("planned_cpu_s", "planned_money", "cpu_calibration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"CyclePlan.{name} = {value!r} must be a finite number >= 0")
        if self.candidates < 1:
            raise ValueError(f"CyclePlan.candidates = {self.candidates!r} must be at least 1")

    @property
    def planned(self) -> policies.Spend:
        return policies.Spend(
            cpu_seconds=self.planned_cpu_s, shots=self.planned_shots, money=self.planned_money
        )

    def reserving(self, others: Sequence[CyclePlan]) -> CyclePlan:
        """This plan with the planned spend of ``others`` added: a cycle that trains several candidates at once
        reserves the budget of all of them (each candidate keeps its own plan; see ``Store.candidates``)."""
        return dataclasses.replace(
            self,
            planned_cpu_s=self.planned_cpu_s + sum(p.planned_cpu_s for p in others),
            planned_shots=self.planned_shots + sum(p.planned_shots for p in others),
            planned_money=self.planned_money + sum(p.planned_money for p in others),
            candidates=1 + len(others),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.value,
            "trial": self.trial,
            "planned_cpu_s": self.planned_cpu_s,
            "planned_shots": self.planned_shots,
            "planned_money": self.planned_money,
            "cpu_calibration": self.cpu_calibration,
            # Only when several: a one-candidate cycle's plan reads as it always has.
            **({"candidates": self.candidates} if self.candidates > 1 else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CyclePlan:
        """Reads a stored plan; an empty mapping (a cycle begun without a planner, e.g. in tests) is the default."""
        return cls(
            source=PlanSource(data.get("source", PlanSource.LEARNER)),
            trial=None if data.get("trial") is None else int(data["trial"]),
            planned_cpu_s=float(data.get("planned_cpu_s", 0.0)),
            planned_shots=int(data.get("planned_shots", 0)),
            planned_money=float(data.get("planned_money", 0.0)),
            cpu_calibration=float(data.get("cpu_calibration", 1.0)),
            candidates=int(data.get("candidates", 1)),
        )
