"""Per-day resource budgets: what was spent today (UTC) and what is left."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from .decision import require_aware
from .records import CycleRecord, Spend

__all__ = ["Budget", "day_start", "remaining_budget", "spent_today"]


@dataclass(frozen=True)
class Budget:
    """The most a UTC day may spend. Defaults: 6 CPU-hours, no quantum shots, no money (simulator only).

    Attributes:
        per_day: limits on CPU-seconds, shots and money per UTC calendar day.
    """

    per_day: Spend = Spend(cpu_seconds=6 * 3600.0, shots=0, money=0.0)


def day_start(now: datetime) -> datetime:
    """Midnight UTC of the day ``now`` falls in (budgets reset then)."""
    require_aware("now", now)
    utc = now.astimezone(UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def spent_today(cycles: Iterable[CycleRecord], now: datetime) -> Spend:
    """The spend of every cycle that started today (UTC) at or before ``now``, running ones included."""
    start = day_start(now)
    total = Spend()
    for cycle in cycles:
        if start <= cycle.started_at <= now:
            total = total + cycle.spend
    return total


def remaining_budget(budget: Budget, cycles: Iterable[CycleRecord], now: datetime) -> Spend:
    """What today's budget still allows (never negative)."""
    spent = spent_today(cycles, now)
    limit = budget.per_day
    return Spend(
        cpu_seconds=max(0.0, limit.cpu_seconds - spent.cpu_seconds),
        shots=max(0, limit.shots - spent.shots),
        money=max(0.0, limit.money - spent.money),
    )
