"""The one output shape of every policy: ``Decision(action, reasons, evidence)``, JSON-serialisable.

A decision lists every reason that fired, suppressed, was overridden or is worth noting, in a fixed order, so
that the same inputs always give the same decision and the same JSON text (the replay golden file relies on it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = ["Action", "Decision", "PolicyInputError", "Reason", "ReasonKind", "jsonable", "require_aware"]


class PolicyInputError(ValueError):
    """A policy was given an invalid record or configuration; the message names the value and the fix."""


class Action(StrEnum):
    """What a policy tells the agent to do (a ``str``, so it serialises as its value)."""

    RUN = "run"  # trigger: start a cycle now
    WAIT = "wait"  # trigger: do not start a cycle now
    PROPOSE = "propose"  # recipe: train with the proposed recipe
    SKIP = "skip"  # recipe: no recipe fits the remaining budget
    PROMOTE = "promote"  # promotion: make the candidate the champion
    REJECT = "reject"  # promotion: discard the candidate
    HOLD = "hold"  # promotion: keep the candidate for a human to decide
    ROLLBACK = "rollback"  # rollback: restore the previous champion
    KEEP = "keep"  # rollback: keep the live champion
    EXTEND = "extend"  # canary: bake longer (too few live samples to judge yet)
    ABORT = "abort"  # canary: withdraw the candidate, the champion keeps all traffic


class ReasonKind(StrEnum):
    """The role a reason played in the decision."""

    FIRED = "fired"  # a condition that asks for the action (a trigger fired, a check passed)
    SUPPRESSED = "suppressed"  # a condition that blocked the action (cooldown, pause, a failed check)
    OVERRIDDEN = "overridden"  # a suppressor that an operator command overrode
    NOTE = "note"  # context that changed nothing but a human should see (a slice too small to judge)


@dataclass(frozen=True)
class Reason:
    """One reason of a decision.

    Attributes:
        code: a stable machine-readable identifier, e.g. ``"cooldown"`` or ``"bootstrap_lcb"``.
        kind: its role (fired, suppressed, overridden, note).
        message: one human sentence with the numbers behind it.
    """

    code: str
    kind: ReasonKind
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "kind": str(self.kind), "message": self.message}


@dataclass(frozen=True)
class Decision:
    """A policy's answer.

    Attributes:
        policy: which policy decided (``"trigger"``, ``"recipe"``, ``"promotion"``, ``"rollback"``).
        action: what to do.
        at: the ``now`` the policy was given.
        reasons: every reason that fired, suppressed, was overridden or is noted, in a fixed order.
        evidence: the numbers behind the reasons; JSON-safe after :func:`jsonable` (done at construction).
    """

    policy: str
    action: Action
    at: datetime
    reasons: tuple[Reason, ...]
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_aware("Decision.at", self.at)
        object.__setattr__(self, "evidence", jsonable(dict(self.evidence)))

    def codes(self, kind: ReasonKind | None = None) -> tuple[str, ...]:
        """The reason codes, optionally only those of one kind, in order."""
        return tuple(r.code for r in self.reasons if kind is None or r.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``json.dumps`` works on it as is)."""
        return {
            "policy": self.policy,
            "action": str(self.action),
            "at": self.at.isoformat(),
            "reasons": [r.to_dict() for r in self.reasons],
            "evidence": self.evidence,
        }


def require_aware(name: str, value: datetime) -> None:
    """Raises PolicyInputError unless ``value`` is a timezone-aware datetime.

    Naive datetimes are refused rather than guessed: quiet hours, per-day budgets and golden replays all depend on
    knowing which instant a timestamp means.
    """
    if not isinstance(value, datetime):
        raise PolicyInputError(f"{name} = {value!r} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise PolicyInputError(f"{name} = {value.isoformat()} is naive; pass an aware datetime (tzinfo=UTC)")


def jsonable(value: Any) -> Any:
    """Converts evidence to plain JSON types: datetimes to ISO text, durations to seconds, tuples to lists.

    Floats are rounded to 12 significant digits so that golden files do not depend on the last bits of a sum;
    non-finite floats become ``None`` (JSON has no NaN).

    Raises:
        PolicyInputError: a value has no JSON form (names its type).
    """
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        value = value.item()
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # also StrEnum members: keep only their value
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return jsonable(value.total_seconds())
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    raise PolicyInputError(f"evidence value {value!r} of type {type(value).__name__} has no JSON form")
