"""What the console shows, read from the store into frozen records; the pages render these.

Only reads: every function here takes the store and returns records, and nothing writes (the console changes
nothing; operator actions stay in the CLI). Each part tolerates what an older or younger daemon has not recorded:
a cycle without loss samples, a promotion decision without per-example differences, no canary, no usage log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.console.signals import Series, SignalSource, canary_series, default_sources, read_series
from agent.store import (
    AuditEntry,
    AuditKind,
    ChampionState,
    Cycle,
    DecisionRecord,
    ModelVersion,
    NotFoundError,
    ServingInterval,
    Store,
)

__all__ = ["ConsoleView", "CycleCard", "Evidence", "load_console", "load_cycle"]

# Decisions are matched to a cycle by time when they carry no cycle id (trigger and recipe are decided before the
# cycle row exists); only this many of the newest of each kind are searched.
_DECISIONS_SEARCHED = 500
_SLICE_VERDICTS = {"slice_too_small": "too small to judge", "slice_regression": "regressed"}


@dataclass(frozen=True, slots=True)
class Evidence:
    """The promotion decision's evidence, typed for drawing (every field may be missing)."""

    candidate_mean: float | None
    champion_mean: float | None
    compared_with: str | None
    mean_gain: float | None
    lcb: float | None
    confidence: float | None
    paired: int | None
    differences: tuple[float, ...]
    slices: tuple[tuple[str, int, float, str], ...]  # name, examples, mean difference, verdict
    smoke_ok: bool | None

    @classmethod
    def from_decision(cls, decision: DecisionRecord | None) -> Evidence | None:
        if decision is None:
            return None
        ev = decision.evidence
        diffs = ev.get("differences")
        values = diffs.values() if isinstance(diffs, Mapping) else diffs if isinstance(diffs, list) else ()
        slices = ev.get("slices") if isinstance(ev.get("slices"), Mapping) else {}
        smoke = None
        verdicts: dict[str, str] = {}
        for reason in decision.reasons:
            if not isinstance(reason, Mapping):
                continue
            code, message = reason.get("code"), str(reason.get("message", ""))
            if code == "smoke_test":
                smoke = reason.get("kind") == "fired"
            # The policy names each slice it could not judge or found worse as "slice '<name>'" in the message.
            for name in slices:
                if code in _SLICE_VERDICTS and message.startswith(f"slice {str(name)!r}"):
                    verdicts[str(name)] = _SLICE_VERDICTS[code]
        return cls(
            candidate_mean=_number(ev.get("candidate_mean")),
            champion_mean=_number(ev.get("champion_mean")),
            compared_with=_text(ev.get("compared_with") or ev.get("champion")),
            mean_gain=_number(ev.get("mean_gain")),
            lcb=_number(ev.get("lcb")),
            confidence=_number(ev.get("confidence")),
            paired=_int(ev.get("paired_examples")),
            differences=tuple(v for v in (_number(x) for x in values) if v is not None),
            slices=tuple(
                (
                    str(name),
                    _int(s.get("n")) or 0,
                    _number(s.get("mean_difference")) or 0.0,
                    verdicts.get(str(name), "no regression"),
                )
                for name, s in sorted(slices.items())
                if isinstance(s, Mapping)
            ),
            smoke_ok=smoke,
        )


@dataclass(frozen=True, slots=True)
class CycleCard:
    """One cycle and everything recorded about it."""

    cycle: Cycle
    trigger: DecisionRecord | None
    recipe_decision: DecisionRecord | None
    promotion: DecisionRecord | None
    evidence: Evidence | None
    decisions: tuple[DecisionRecord, ...]
    losses: tuple[tuple[int, float], ...]
    candidate: ModelVersion | None
    canary: tuple[Series, ...]
    canary_decisions: tuple[DecisionRecord, ...]
    now: datetime


@dataclass(frozen=True, slots=True)
class ConsoleView:
    """The console's front page."""

    now: datetime
    champion: ChampionState
    champion_version: ModelVersion | None
    lineage: tuple[str, ...]
    versions: tuple[ModelVersion, ...]
    cycles: tuple[Cycle, ...]
    promotions: Mapping[int, DecisionRecord]
    serving: tuple[ServingInterval, ...]
    serve_entries: tuple[AuditEntry, ...]
    canary_decisions: tuple[DecisionRecord, ...]
    series: tuple[Series, ...]
    daemon_status: Mapping[str, Any] | None


def load_console(
    store: Store,
    *,
    daemon_status: Callable[[], Mapping[str, Any] | None] | None = None,
    sources: Sequence[SignalSource] | None = None,
    max_cycles: int = 50,
    signals_window: timedelta | None = timedelta(days=14),
) -> ConsoleView:
    """Reads the front page: champion and lineage, versions, cycles, serving history, live signals.

    Args:
        daemon_status: reads the daemon's own status line (injected: the daemon owns where it keeps it).
        sources: live-signal sources (default: metric samples and the usage log).
    """
    now = store.clock.now()
    champion = store.champion.get()
    versions = store.versions.list()
    by_id = {v.id: v for v in versions}
    cycles = store.cycles.list(limit=max_cycles)
    candidate_of = {c.id: c.candidate_id for c in cycles}
    promotions: dict[int, DecisionRecord] = {}
    for d in store.decisions.list(kind="promotion", limit=max_cycles * 2):
        if d.cycle_id is not None and _of_candidate(d, candidate_of.get(d.cycle_id), promotions.get(d.cycle_id)):
            promotions[d.cycle_id] = d
    since = None if signals_window is None else now - signals_window
    return ConsoleView(
        now=now,
        champion=champion,
        champion_version=by_id.get(champion.version_id) if champion.version_id else None,
        lineage=_lineage(champion.version_id, by_id),
        versions=tuple(versions),
        cycles=tuple(cycles),
        promotions=promotions,
        serving=tuple(store.audit.serving_history()),
        serve_entries=tuple(store.audit.entries(kind=AuditKind.SERVE)),
        canary_decisions=tuple(_canary_decisions(store, None)),
        series=tuple(read_series(store, sources if sources is not None else default_sources(), since=since)),
        daemon_status=daemon_status() if daemon_status is not None else None,
    )


def load_cycle(store: Store, cycle_id: int, *, sources: Sequence[SignalSource] | None = None) -> CycleCard:
    """Reads one cycle's card.

    Raises:
        NotFoundError: there is no such cycle.
    """
    cycle = store.cycles.get(cycle_id)
    now = store.clock.now()
    own = store.decisions.list(cycle_id=cycle.id)
    promotion = None
    for d in own:
        if d.kind == "promotion" and _of_candidate(d, cycle.candidate_id, promotion):
            promotion = d
    candidate = store.versions.find(cycle.candidate_id) if cycle.candidate_id else None
    series = read_series(store, sources if sources is not None else default_sources(), since=cycle.started_at)
    return CycleCard(
        cycle=cycle,
        trigger=_before(store, "trigger", cycle.started_at, action="run"),
        recipe_decision=_before(store, "recipe", cycle.started_at),
        promotion=promotion,
        evidence=Evidence.from_decision(promotion),
        decisions=tuple(own),
        losses=_losses(store, cycle),
        candidate=candidate,
        canary=tuple(canary_series(series, cycle, until=now)),
        canary_decisions=tuple(d for d in own if d.kind.startswith("canary")),
        now=now,
    )


def _of_candidate(decision: DecisionRecord, candidate_id: str | None, kept: DecisionRecord | None) -> bool:
    """Whether ``decision`` (a later promotion decision of the same cycle) replaces ``kept``: the newest one, except
    that in a cycle with several candidates one about the cycle's own candidate is never replaced by another's."""
    def mine(d: DecisionRecord) -> bool:
        return d.evidence.get("candidate") == candidate_id

    return kept is None or mine(decision) or not mine(kept)


def cycle_exists(store: Store, cycle_id: int) -> bool:
    try:
        store.cycles.get(cycle_id)
    except NotFoundError:
        return False
    return True


def _lineage(version_id: str | None, by_id: Mapping[str, ModelVersion]) -> tuple[str, ...]:
    """The champion, its parent, its parent's parent … down to the base model."""
    chain: list[str] = []
    seen: set[str] = set()
    while version_id is not None and version_id not in seen:
        chain.append(version_id)
        seen.add(version_id)
        version = by_id.get(version_id)
        version_id = version.parent_id if version else None
    return (*chain, "base")


def _before(store: Store, kind: str, at: datetime, *, action: str | None = None) -> DecisionRecord | None:
    """The newest decision of ``kind`` (and ``action``) taken at or before ``at``."""
    found = None
    for decision in store.decisions.list(kind=kind, limit=_DECISIONS_SEARCHED):
        if decision.at <= at and (action is None or decision.action == action):
            found = decision
    return found


def _losses(store: Store, cycle: Cycle) -> tuple[tuple[int, float], ...]:
    """Training loss per step (a resumed cycle may report a step twice: the later report wins)."""
    by_step: dict[int, float] = {}
    # Recorded while the cycle ran: reading from its start spares every older cycle's samples.
    for sample in store.metrics.samples(
        "train_loss", since=cycle.started_at, labels={"cycle": str(cycle.id)}
    ):
        step = _int(sample.labels.get("step"))
        if step is not None and math.isfinite(sample.value):
            by_step[step] = sample.value
    return tuple(sorted(by_step.items()))


def _canary_decisions(store: Store, cycle_id: int | None) -> list[DecisionRecord]:
    # The closed loop records canary steps as decisions of kind "canary…"; none exist before it lands.
    recent = store.decisions.list(cycle_id=cycle_id, limit=_DECISIONS_SEARCHED)
    return [d for d in recent if d.kind.startswith("canary")]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
