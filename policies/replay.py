"""Replay a recorded history: the sequence of decisions (and reasons) the policies produce for it.

A history is JSON (already parsed; reading the file is the caller's job)::

    {"format": "qtha-history/1",
     "config": {"trigger": {...}, "promotion": {...}, "rollback": {...}, "seed": 0},   # optional
     "events": [{"at": "2026-03-02T08:00:00+00:00", "type": "...", ...}, ...]}

Durations in ``config`` are seconds; keys are the config dataclasses' field names. Events, in time order:

- ``metric`` {version, value}: an evaluation of a model. When the version is the champion within its bake
  period after a promotion that replaced another champion, a **rollback** decision follows.
- ``new_data`` {count}: examples arrived.
- ``command`` {command: pause | resume | run_now}: an operator command.
- ``tick``: the daemon considers a cycle: a **trigger** decision follows.
- ``cycle_started`` {spend?}: a cycle starts (clears new data and run-now).
- ``cycle_finished`` {outcome: promoted | rejected | held | failed, spend?}: the running cycle ends.
- ``evaluation`` {candidate, champion?}: a candidate evaluated against the champion: a **promotion** decision
  follows. Each evaluation is {version, scores: [[example_id, score, slice?], ...], smoke_ok?, trainable_params?}.

Replayed decisions change the replayed state as the daemon would: a promotion makes the candidate the champion
(its samples then feed the drift detector), a rollback restores the previous champion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .decision import Action, Decision, PolicyInputError, require_aware
from .promotion import PromotionConfig, decide_promotion
from .records import CycleRecord, Evaluation, ExampleScore, MetricSample, Spend
from .rollback import PromotionRecord, RollbackConfig, decide_rollback
from .trigger import TriggerConfig, TriggerHistory, decide_trigger

__all__ = ["HISTORY_FORMAT", "ReplayConfig", "ReplayStep", "parse_history", "replay_history"]

HISTORY_FORMAT = "qtha-history/1"
_EVENT_TYPES = ("metric", "new_data", "command", "tick", "cycle_started", "cycle_finished", "evaluation")


@dataclass(frozen=True)
class ReplayConfig:
    """The policies' configurations for a replay."""

    trigger: TriggerConfig = TriggerConfig()
    promotion: PromotionConfig = PromotionConfig()
    rollback: RollbackConfig = RollbackConfig()
    seed: int = 0


@dataclass(frozen=True)
class Event:
    """One parsed history event: its position, time, type and remaining fields."""

    index: int
    at: datetime
    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class ReplayStep:
    """A decision produced by the event at ``index`` of the history."""

    index: int
    event: str
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "event": self.event, "decision": self.decision.to_dict()}


def _from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """Builds the frozen config ``cls`` from JSON, converting by each field's default: seconds to timedelta,
    lists to tuples, objects to nested configs. Unknown keys are refused (a typo must not pass silently)."""
    if not isinstance(data, Mapping):
        raise PolicyInputError(f"{where} = {data!r} must be an object")
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in names:
            raise PolicyInputError(f"{where}.{key} is not a setting; use one of {sorted(names)}")
        default = getattr(defaults, key)
        if isinstance(default, timedelta):
            value = timedelta(seconds=float(value))
        elif dataclasses.is_dataclass(default):
            value = _from_dict(type(default), value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def _parse_config(data: Mapping[str, Any]) -> ReplayConfig:
    sections = {"trigger": TriggerConfig, "promotion": PromotionConfig, "rollback": RollbackConfig}
    unknown = set(data) - set(sections) - {"seed"}
    if unknown:
        raise PolicyInputError(
            f"config keys {sorted(unknown)} are unknown; use {sorted(sections)} and 'seed'"
        )
    built = {name: _from_dict(cls, data.get(name, {}), f"config.{name}") for name, cls in sections.items()}
    return ReplayConfig(**built, seed=int(data.get("seed", 0)))


def _parse_time(value: Any, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise PolicyInputError(f"{where}.at = {value!r} is not an ISO 8601 timestamp") from None
    require_aware(f"{where}.at", at)
    return at


def parse_history(history: Mapping[str, Any]) -> tuple[ReplayConfig, tuple[Event, ...]]:
    """Validates a parsed history document and returns its configuration and events.

    Raises:
        PolicyInputError: a wrong format tag, an unknown event type, a missing or naive time, or events out of
            time order (each message names the event index).
    """
    if not isinstance(history, Mapping):
        raise PolicyInputError(f"a history is a JSON object, not {type(history).__name__}")
    if history.get("format") != HISTORY_FORMAT:
        raise PolicyInputError(f"history format {history.get('format')!r}; expected {HISTORY_FORMAT!r}")
    config = _parse_config(history.get("config", {}))
    events: list[Event] = []
    for index, raw in enumerate(history.get("events", [])):
        where = f"events[{index}]"
        if not isinstance(raw, Mapping) or raw.get("type") not in _EVENT_TYPES:
            raise PolicyInputError(f"{where} = {raw!r}: 'type' must be one of {_EVENT_TYPES}")
        at = _parse_time(raw.get("at"), where)
        if events and at < events[-1].at:
            raise PolicyInputError(
                f"{where}.at = {raw['at']} is before the previous event; sort events by time"
            )
        data = {k: v for k, v in raw.items() if k not in ("at", "type")}
        events.append(Event(index, at, raw["type"], data))
    return config, tuple(events)


def _evaluation(data: Mapping[str, Any] | None, where: str) -> Evaluation | None:
    if data is None:
        return None
    try:
        scores = tuple(
            ExampleScore(str(row[0]), float(row[1]), *(str(s) for s in row[2:3])) for row in data["scores"]
        )
        return Evaluation(
            str(data["version"]),
            scores,
            bool(data.get("smoke_ok", True)),
            int(data.get("trainable_params", 0)),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PolicyInputError(f"{where} is not a valid evaluation ({exc!r})") from None


@dataclass
class _State:
    """The replayed agent's state (mutable, local to one replay)."""

    metrics: list[MetricSample] = field(default_factory=list)
    cycles: list[CycleRecord] = field(default_factory=list)
    new_examples: int = 0
    champion: str | None = None
    champion_since: datetime | None = None
    paused: bool = False
    run_now: bool = False
    promotion: PromotionRecord | None = None
    previous_since: datetime | None = None

    def history(self) -> TriggerHistory:
        return TriggerHistory(
            metrics=tuple(m for m in self.metrics if m.version == self.champion),
            cycles=tuple(self.cycles),
            new_examples=self.new_examples,
            champion_since=self.champion_since,
            paused=self.paused,
            run_now=self.run_now,
        )


def _spend(data: Mapping[str, Any]) -> Spend:
    return _from_dict(Spend, data.get("spend", {}), "spend")


def _apply(state: _State, event: Event, config: ReplayConfig) -> Decision | None:
    data, where = event.data, f"events[{event.index}]"
    if event.type == "metric":
        state.metrics.append(MetricSample(event.at, float(data["value"]), str(data.get("version", ""))))
        promotion = state.promotion
        if (
            promotion is not None
            and promotion.previous_version is not None
            and data.get("version") == state.champion
            and event.at - promotion.promoted_at <= config.rollback.bake_period
        ):
            decision = decide_rollback(promotion, state.metrics, event.at, config.rollback)
            if decision.action == Action.ROLLBACK:
                state.champion, state.champion_since = promotion.previous_version, state.previous_since
                state.promotion = None
            return decision
    elif event.type == "new_data":
        state.new_examples += int(data["count"])
    elif event.type == "command":
        command = data.get("command")
        if command not in ("pause", "resume", "run_now"):
            raise PolicyInputError(f"{where}.command = {command!r}; use pause, resume or run_now")
        state.paused = {"pause": True, "resume": False}.get(command, state.paused)
        state.run_now = state.run_now or command == "run_now"
    elif event.type == "tick":
        return decide_trigger(state.history(), event.at, config.trigger)
    elif event.type == "cycle_started":
        if any(c.finished_at is None for c in state.cycles):
            raise PolicyInputError(f"{where}: a cycle starts while another is running")
        state.cycles.append(CycleRecord(event.at, None, "running", _spend(data)))
        state.new_examples, state.run_now = 0, False
    elif event.type == "cycle_finished":
        running = [i for i, c in enumerate(state.cycles) if c.finished_at is None]
        if not running:
            raise PolicyInputError(f"{where}: a cycle finishes but none is running")
        cycle = state.cycles[running[0]]
        spend = _spend(data) if "spend" in data else cycle.spend
        outcome: Any = data.get("outcome")  # CycleRecord refuses anything but a finished outcome
        state.cycles[running[0]] = replace(cycle, finished_at=event.at, outcome=outcome, spend=spend)
    elif event.type == "evaluation":
        candidate = _evaluation(data.get("candidate"), f"{where}.candidate")
        champion = _evaluation(data.get("champion"), f"{where}.champion")
        assert candidate is not None
        decision = decide_promotion(candidate, champion, event.at, config.promotion, seed=config.seed)
        if decision.action == Action.PROMOTE:
            previous_metric = champion.mean if champion is not None else None
            previous = champion.version if champion is not None else None
            state.promotion = PromotionRecord(candidate.version, previous, event.at, previous_metric)
            state.previous_since = state.champion_since
            state.champion, state.champion_since = candidate.version, event.at
        return decision
    return None


def replay_history(history: Mapping[str, Any]) -> tuple[ReplayStep, ...]:
    """The decisions a recorded history produces, in order.

    Args:
        history: the parsed JSON document (see the module docstring).

    Returns:
        One step per decision-producing event (tick, evaluation, champion metric during the bake period).

    Raises:
        PolicyInputError: the history is malformed (the message names the event).
    """
    config, events = parse_history(history)
    state = _State()
    steps = []
    for event in events:
        try:
            decision = _apply(state, event, config)
        except (KeyError, TypeError, ValueError) as exc:
            where = f"events[{event.index}]"
            if isinstance(exc, PolicyInputError) and where in str(exc):
                raise
            detail = str(exc) if isinstance(exc, PolicyInputError) else repr(exc)
            raise PolicyInputError(f"{where} ({event.type}) is malformed: {detail}") from None
        if decision is not None:
            steps.append(ReplayStep(event.index, event.type, decision))
    return tuple(steps)
