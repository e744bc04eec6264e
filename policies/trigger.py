"""Should a training cycle start now?

Fires on any of: no champion yet, the champion's metric drifting down, at least ``min_new_examples`` new
examples, the champion older than ``staleness``, an operator's run-now, and the last cycle having failed (the
work it was started for is still undone; this is also what makes the breaker's half-open probe happen once the
back-off is over, since the failed cycle already reset the new-example count).

Suppressed by: a pause, a cycle already running, an open circuit breaker, an exhausted budget, the cooldown after
the last cycle, quiet hours.

Operator run-now (decided here, tested in tests/policies/test_trigger.py): it overrides the **cooldown** and
**quiet hours** (an operator at the console is the judge of timing) but **not** a pause (a paused agent never
fires; resume first), a running cycle (one cycle at a time), an open breaker (reset it by fixing the failure and
waiting for the half-open probe) or an exhausted budget (money and shots are hard limits). An overridden
suppressor is still listed, with kind ``overridden``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .breaker import BreakerConfig, breaker_status
from .budget import Budget, remaining_budget, spent_today
from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, require_aware
from .drift import DriftConfig, detect_drift
from .records import CycleRecord, MetricSample, Spend

__all__ = ["TriggerConfig", "TriggerHistory", "decide_trigger"]

_F, _S, _O, _N = ReasonKind.FIRED, ReasonKind.SUPPRESSED, ReasonKind.OVERRIDDEN, ReasonKind.NOTE


@dataclass(frozen=True)
class TriggerConfig:
    """When to train.

    Attributes:
        min_new_examples: N, new examples since the last cycle that fire a cycle.
        staleness: T, the champion age that fires a cycle.
        cooldown: minimum time from the end of the last cycle to the start of the next.
        quiet_hours: ``(start, end)`` UTC hours, ``[start, end)``, wrapping midnight when start > end; no
            cycle starts then. ``None``: no quiet hours.
        drift: the degradation detector.
        breaker: the circuit breaker.
        budget: per-day limits.
        min_cycle_spend: the least a cycle needs; a resource with less left than this suppresses the trigger.
            Shots and money default to 0 because a simulator cycle needs none of them.
    """

    min_new_examples: int = 200
    staleness: timedelta = timedelta(days=7)
    cooldown: timedelta = timedelta(hours=1)
    quiet_hours: tuple[int, int] | None = None
    drift: DriftConfig = DriftConfig()
    breaker: BreakerConfig = BreakerConfig()
    budget: Budget = Budget()
    min_cycle_spend: Spend = Spend(cpu_seconds=60.0)

    def __post_init__(self) -> None:
        if self.min_new_examples < 1:
            raise PolicyInputError(f"TriggerConfig.min_new_examples = {self.min_new_examples} must be >= 1")
        if self.cooldown < timedelta(0) or self.staleness <= timedelta(0):
            raise PolicyInputError(
                f"TriggerConfig cooldown = {self.cooldown} must be >= 0 and staleness = {self.staleness} > 0"
            )
        if self.quiet_hours is not None:
            start, end = self.quiet_hours
            if not (0 <= start < 24 and 0 <= end < 24) or start == end:
                raise PolicyInputError(
                    f"TriggerConfig.quiet_hours = {self.quiet_hours!r}: use two different UTC hours in 0..23 "
                    "(or None for no quiet hours)"
                )


@dataclass(frozen=True)
class TriggerHistory:
    """What the trigger looks at.

    Attributes:
        metrics: the current champion's evaluation samples (any order; sorted by time).
        cycles: past and running cycles.
        new_examples: examples that arrived since the last cycle started.
        champion_since: when the current champion was trained; ``None`` when there is no champion yet.
        paused: whether an operator paused the agent.
        run_now: whether an operator asked for a cycle now (and it has not started yet).
    """

    metrics: tuple[MetricSample, ...] = ()
    cycles: tuple[CycleRecord, ...] = ()
    new_examples: int = 0
    champion_since: datetime | None = None
    paused: bool = False
    run_now: bool = False

    def __post_init__(self) -> None:
        if self.new_examples < 0:
            raise PolicyInputError(f"TriggerHistory.new_examples = {self.new_examples} must be >= 0")
        if self.champion_since is not None:
            require_aware("TriggerHistory.champion_since", self.champion_since)


def _in_quiet_hours(now: datetime, quiet: tuple[int, int]) -> bool:
    hour, (start, end) = now.astimezone(UTC).hour, quiet
    return start <= hour < end if start < end else hour >= start or hour < end


@dataclass
class _Collected:
    fired: list[Reason] = field(default_factory=list)
    hard: list[Reason] = field(default_factory=list)  # suppressors nothing overrides
    soft: list[Reason] = field(default_factory=list)  # suppressors an operator's run-now overrides
    notes: list[Reason] = field(default_factory=list)


def _firing(history: TriggerHistory, now: datetime, config: TriggerConfig, out: _Collected) -> dict:
    drift = detect_drift(history.metrics, config.drift)
    if history.champion_since is None:
        out.fired.append(Reason("no_champion", _F, "there is no champion yet: train the first one"))
    if drift.drifted:
        out.fired.append(
            Reason(
                "drift",
                _F,
                f"{config.drift.method} alarm at sample {drift.alarm_index} (statistic {drift.statistic:.4g} > "
                f"{config.drift.threshold:g}); degradation began at sample {drift.onset_index}",
            )
        )
    elif not drift.enough_samples and history.champion_since is not None:
        out.notes.append(
            Reason(
                "drift_insufficient_samples",
                _N,
                f"{drift.samples} champion sample(s) < {config.drift.min_samples}: drift not assessed",
            )
        )
    if history.new_examples >= config.min_new_examples:
        out.fired.append(
            Reason("new_data", _F, f"{history.new_examples} new examples >= {config.min_new_examples}")
        )
    age = None if history.champion_since is None else now - history.champion_since
    if age is not None and age >= config.staleness:
        out.fired.append(Reason("stale", _F, f"champion is {age} old >= {config.staleness}"))
    if history.run_now:
        out.fired.append(Reason("run_now", _F, "an operator asked for a cycle now"))
    finished = sorted((c for c in history.cycles if c.finished_at is not None), key=lambda c: c.started_at)
    if finished and finished[-1].failed:
        assert finished[-1].finished_at is not None
        out.fired.append(
            Reason(
                "retry_failed",
                _F,
                f"the last cycle failed at {finished[-1].finished_at.isoformat()}: retry it",
            )
        )
    return {"drift": drift, "new_examples": history.new_examples, "champion_age_s": age}


def _suppressing(history: TriggerHistory, now: datetime, config: TriggerConfig, out: _Collected) -> dict:
    if history.paused:
        out.hard.append(Reason("paused", _S, "the agent is paused by an operator (resume to allow cycles)"))
    running = [c for c in history.cycles if c.finished_at is None]
    if running:
        first = min(c.started_at for c in running)
        out.hard.append(
            Reason("cycle_running", _S, f"a cycle started at {first.isoformat()} is still running")
        )
    breaker = breaker_status(history.cycles, now, config.breaker)
    if breaker.state == "open":
        assert breaker.open_until is not None
        out.hard.append(
            Reason(
                "breaker_open",
                _S,
                f"{breaker.consecutive_failures} consecutive failed cycles opened the breaker until "
                f"{breaker.open_until.isoformat()}",
            )
        )
    elif breaker.state == "half_open":
        out.notes.append(
            Reason(
                "breaker_half_open",
                _N,
                f"after {breaker.consecutive_failures} consecutive failures the next cycle is the half-open probe",
            )
        )
    left = remaining_budget(config.budget, history.cycles, now)
    need, limit = config.min_cycle_spend, config.budget.per_day
    for resource in ("cpu_seconds", "shots", "money"):
        have, needed = getattr(left, resource), getattr(need, resource)
        if have < needed:
            out.hard.append(
                Reason(
                    f"budget_exhausted_{resource}",
                    _S,
                    f"{resource} left today {have:g} < the {needed:g} a cycle needs (limit {getattr(limit, resource):g})",
                )
            )
        elif getattr(limit, resource) > 0 and have <= 0:
            out.notes.append(
                Reason(
                    f"budget_exhausted_{resource}",
                    _N,
                    f"{resource} budget spent today: only backends that need no {resource} can be planned",
                )
            )
    finished = [c.finished_at for c in history.cycles if c.finished_at is not None]
    cooldown_left = max(finished) + config.cooldown - now if finished else timedelta(0)
    if cooldown_left > timedelta(0):
        out.soft.append(Reason("cooldown", _S, f"cooldown: {cooldown_left} left of {config.cooldown}"))
    if config.quiet_hours is not None and _in_quiet_hours(now, config.quiet_hours):
        start, end = config.quiet_hours
        out.soft.append(
            Reason(
                "quiet_hours", _S, f"{now.astimezone(UTC):%H:%M} UTC is in quiet hours {start:02d}-{end:02d}"
            )
        )
    return {
        "breaker": breaker,
        "spent_today": spent_today(history.cycles, now),
        "budget_left": left,
        "cooldown_left_s": max(cooldown_left, timedelta(0)),
    }


def decide_trigger(
    history: TriggerHistory, now: datetime, config: TriggerConfig = TriggerConfig()
) -> Decision:
    """Decides whether a training cycle starts now.

    Args:
        history: the recorded state (champion samples, cycles, new data, operator flags).
        now: the current instant (timezone-aware); the policy never reads a clock.
        config: thresholds, detectors, budgets.

    Returns:
        ``Action.RUN`` when at least one condition fired and no suppressor is active, else ``Action.WAIT``.
        Reasons: fired conditions, then hard suppressors, then cooldown/quiet hours (``overridden`` when an
        operator's run-now overrode them), then notes.
    """
    require_aware("now", now)
    out = _Collected()
    evidence = _firing(history, now, config, out) | _suppressing(history, now, config, out)
    soft_kind = _O if history.run_now else _S
    soft = [
        Reason(r.code, soft_kind, r.message + (" (overridden by run-now)" if history.run_now else ""))
        for r in out.soft
    ]
    blocked = bool(out.hard) or any(r.kind == _S for r in soft)
    action = Action.RUN if out.fired and not blocked else Action.WAIT
    reasons = out.fired + out.hard + soft + out.notes
    if not out.fired:
        reasons.append(Reason("nothing_fired", _N, "no trigger condition fired"))
    return Decision("trigger", action, now, tuple(reasons), evidence)
