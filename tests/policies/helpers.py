"""Shared builders for the policy tests: a fixed clock origin and short record constructors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policies import CycleRecord, Evaluation, ExampleScore, MetricSample, Spend

# A Monday; every scenario is expressed as hours from here.
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def cycle(start_h: float, end_h: float | None, outcome: str = "rejected", cpu: float = 0.0) -> CycleRecord:
    return CycleRecord(
        at(start_h),
        None if end_h is None else at(end_h),
        "running" if end_h is None else outcome,  # type: ignore[arg-type]
        Spend(cpu_seconds=cpu),
    )


def samples(values: list[float], *, start_h: float = 0.0, version: str = "v1") -> tuple[MetricSample, ...]:
    return tuple(MetricSample(at(start_h + i), v, version) for i, v in enumerate(values))


def evaluation(
    version: str,
    scores: list[float],
    *,
    slices: list[str] | None = None,
    smoke_ok: bool = True,
    params: int = 0,
) -> Evaluation:
    names = slices or ["all"] * len(scores)
    return Evaluation(
        version,
        tuple(ExampleScore(f"ex{i:04d}", s, n) for i, (s, n) in enumerate(zip(scores, names, strict=True))),
        smoke_ok,
        params,
    )
