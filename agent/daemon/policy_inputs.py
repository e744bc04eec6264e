"""From the daemon's typed configuration and recorded history to the pure policies' inputs.

The effective policy is ``[policy]`` of the config file with the operator's run-time overrides on top
(``qtha policy set KEY=VALUE`` stores ``policy.KEY`` in the overrides table). Both are validated by the same
pydantic model, so a bad override is refused with the same message a bad file would get.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

import policies
from agent.config import ConfigError, PolicyConfig, QthaConfig, short_repr
from agent.cycle.plan import CyclePlan
from agent.series import SERIES
from agent.store import Cycle, CycleCandidate, CycleState, Store

__all__ = [
    "OVERRIDE_PREFIX",
    "candidate_spend",
    "candidates_of",
    "cycle_outcome",
    "cycle_records",
    "data_refused",
    "resolve_policy",
    "rollback_inputs",
    "trigger_history",
    "parse_policy_value",
    "promotion_config",
    "recipe_config",
    "rollback_config",
    "trigger_config",
]

OVERRIDE_PREFIX = "policy."
EVAL_METRIC = "eval_mean"  # the daemon's own held-out score of a version (higher is better)


def parse_policy_value(base: PolicyConfig, key: str, raw: str) -> Any:
    """Validates ``KEY=VALUE`` from the command line against the policy schema; returns the JSON value to store.

    Raises:
        ConfigError: unknown key or invalid value (names both and lists the keys).
    """
    if key not in PolicyConfig.model_fields:
        raise ConfigError(
            f"unknown policy key {short_repr(key)}; known keys: {', '.join(sorted(PolicyConfig.model_fields))}"
        )
    data = base.model_dump(mode="json")
    data[key] = raw
    try:
        checked = PolicyConfig.model_validate_json(_json_with_raw(data, key, raw))
    except ValidationError as exc:
        raise ConfigError(f"policy {key} = {short_repr(raw)}: {exc.errors()[0]['msg']}") from None
    return checked.model_dump(mode="json")[key]


def _json_with_raw(data: dict[str, Any], key: str, raw: str) -> str:
    import json

    # A raw value that parses as JSON (numbers, booleans, [8, 18], null) is used as such; anything else is a string.
    try:
        data[key] = json.loads(raw)
    except (ValueError, RecursionError):
        data[key] = raw
    return json.dumps(data)


def resolve_policy(config: QthaConfig, overrides: Mapping[str, Any]) -> tuple[PolicyConfig, tuple[str, ...]]:
    """``config.policy`` with each valid ``policy.*`` override applied, and one message per override ignored.

    Each override is checked on its own: one stored by an older qtha, or one that a changed config file makes
    invalid, is left out (the daemon starts and `qtha policy unset` can still reach it) rather than failing all.
    """
    policy = config.policy
    ignored = []
    for name in sorted(overrides):
        if not name.startswith(OVERRIDE_PREFIX):
            continue
        key, value = name[len(OVERRIDE_PREFIX) :], overrides[name]
        if key not in PolicyConfig.model_fields:
            ignored.append(f"stored policy override {key} is not a policy key any more; `qtha policy unset {key}`")
            continue
        try:
            policy = PolicyConfig.model_validate({**policy.model_dump(mode="json"), key: value})
        except ValidationError as exc:
            ignored.append(
                f"stored policy override {key} = {short_repr(value)} is invalid ({exc.errors()[0]['msg']}); "
                f"ignored, using {short_repr(getattr(policy, key))}; `qtha policy set` or `unset` it"
            )
    return policy, tuple(ignored)


def trigger_config(policy: PolicyConfig) -> policies.TriggerConfig:
    return policies.TriggerConfig(
        min_new_examples=policy.min_new_examples,
        staleness=timedelta(hours=policy.staleness_h),
        cooldown=timedelta(seconds=policy.cooldown_s),
        quiet_hours=policy.quiet_hours,
        drift=policies.DriftConfig(
            method=policy.drift_method, delta=policy.drift_delta, threshold=policy.drift_threshold
        ),
        breaker=policies.BreakerConfig(
            failures_to_open=policy.breaker_failures,
            backoff=timedelta(seconds=policy.breaker_backoff_s),
            max_backoff=max(timedelta(hours=24), timedelta(seconds=policy.breaker_backoff_s)),
        ),
        budget=policies.Budget(per_day=budget_per_day(policy)),
        min_cycle_spend=policies.Spend(cpu_seconds=min(60.0, policy.cpu_seconds_per_day)),
    )


def budget_per_day(policy: PolicyConfig) -> policies.Spend:
    return policies.Spend(
        cpu_seconds=policy.cpu_seconds_per_day, shots=policy.shots_per_day, money=policy.money_per_day
    )


def promotion_config(policy: PolicyConfig) -> policies.PromotionConfig:
    return policies.PromotionConfig(
        floor=-math.inf if policy.promotion_floor is None else policy.promotion_floor,
        min_gain=policy.promotion_min_gain,
        confidence=policy.promotion_confidence,
        min_slice_examples=policy.min_slice_examples,
        # Operators of an autonomous loop want slices too small to judge reported, not blocking every cycle.
        small_slice_action="report",
    )


def rollback_config(policy: PolicyConfig) -> policies.RollbackConfig:
    return policies.RollbackConfig(
        bake_period=timedelta(hours=policy.rollback_bake_h), margin=policy.rollback_margin
    )


def cold_start_recipe(config: QthaConfig) -> policies.Recipe:
    """The first cycle's recipe from ``[recipe]`` and ``[training]`` (small enough for a 2-core machine)."""
    section, training = config.recipe, config.training
    lora = section.adapter == "lora"
    return policies.Recipe(
        adapter=section.adapter,
        qnn_mode=None if lora else section.qnn_mode,
        qubits=0 if lora else section.qubits,
        layers=0 if lora else section.layers,
        bond_dim=0 if lora else section.bond_dim,
        rank=section.rank if lora else 0,
        learning_rate=training.learning_rate,
        steps=min(training.steps, section.max_steps),
        backend=config.quantum.backend,
        targets=config.model.targets,
        **run_settings(config),
    )


def run_settings(config: QthaConfig) -> dict[str, int]:
    """The recipe fields the learner does not search: they come from ``[training]``."""
    training = config.training
    return {"batch_size": training.batch_size, "seq_len": training.seq_len, "seed": training.seed}


def measured_cpu_s(store: Store, cycle: Cycle) -> float | None:
    """The CPU-seconds a cycle's training measured (its candidate's ``train_cpu_s``), if it has one."""
    return _trained_cpu_s(store, cycle.candidate_id)


def _trained_cpu_s(store: Store, version_id: str | None) -> float | None:
    version = store.versions.find(version_id) if version_id else None
    value = version.metrics.get("train_cpu_s") if version is not None else None
    return float(value) if isinstance(value, int | float) else None


def candidates_of(store: Store, cycle: Cycle) -> list[CycleCandidate]:
    """The candidates of a cycle that trains several at once, else ``[]`` (asked of the database only for such a
    cycle: the budget reads hundreds of cycles every minute)."""
    return store.candidates.of_cycle(cycle.id) if CyclePlan.from_dict(cycle.plan).candidates > 1 else []


def candidate_spend(store: Store, candidate: CycleCandidate) -> policies.Spend:
    """What one of several candidates of a cycle cost: the CPU-seconds its training measured (or, when its
    self-improvement data was refused before training, its sampling's), else its plan's."""
    planned = CyclePlan.from_dict(candidate.plan).planned
    measured = _trained_cpu_s(store, candidate.version_id)
    if measured is None and isinstance(candidate.evidence.get("sampling_cpu_s"), int | float):
        measured = float(candidate.evidence["sampling_cpu_s"])
    return planned if measured is None else dataclasses.replace(planned, cpu_seconds=measured)


def cpu_history(store: Store, *, limit: int = 50) -> list[tuple[float, float]]:
    """(uncalibrated estimate, measured) training CPU-seconds of recent finished cycles, oldest first.

    A cycle planned with a calibrated model recorded its factor (``CyclePlan.cpu_calibration``); dividing it out
    gives every pair the same reference (the uncalibrated model), so calibrations do not compound.
    """
    pairs = []
    for cycle in store.cycles.list(limit=limit):
        # A cycle with several candidates gives one pair per candidate (each has its own plan and training).
        candidates = candidates_of(store, cycle)
        runs = [(c.plan, c.version_id) for c in reversed(candidates)] or [(cycle.plan, cycle.candidate_id)]
        for stored, version_id in runs:
            plan = CyclePlan.from_dict(stored)
            measured = _trained_cpu_s(store, version_id)
            if plan.planned_cpu_s > 0 and plan.cpu_calibration > 0 and measured is not None:
                pairs.append((plan.planned_cpu_s / plan.cpu_calibration, measured))
    return list(reversed(pairs))


def calibrated_cost_model(store: Store) -> tuple[policies.CostModel, float]:
    """The cost model with its CPU coefficients scaled to what recent cycles measured, and the factor."""
    return policies.calibrate_cpu(policies.CostModel(), cpu_history(store))


def recipe_config(
    config: QthaConfig, cost_model: policies.CostModel | None = None
) -> policies.RecipeConfig:
    """The learner's search space, bounded by ``[recipe]``, cold-starting from the configured recipe, pricing
    recipes with ``cost_model`` (default: the uncalibrated one)."""
    section, training = config.recipe, config.training
    backend = config.quantum.backend
    cold = cold_start_recipe(config)
    option = policies.BackendOption(
        name=backend,
        kind="simulator" if backend in ("jax", "qsim") else "sampler",
        shots=config.quantum.shots,
    )
    space = policies.SearchSpace(
        adapters=("qtha-weight", "lora")
        if section.qnn_mode == "weight"
        else ("qtha-weight", "qtha-activation", "lora"),
        qubits=(2, max(2, section.max_qubits)),
        layers=(1, section.max_layers),
        bond_dims=(1, max(1, section.bond_dim * 2)),
        ranks=(2, max(2, section.rank * 2)),
        learning_rate=(training.learning_rate / 10, min(1e-1, training.learning_rate * 10)),
        steps=(max(1, min(cold.steps, section.max_steps) // 2), section.max_steps),
        backends=(option,) if option.kind == "simulator" else (policies.BackendOption(name="jax"), option),
        targets=config.model.targets,
        methods=tuple(dict.fromkeys(section.methods)),
    )
    return policies.RecipeConfig(space=space, cold_start=cold, cost_model=cost_model or policies.CostModel())


def cycle_spend(store: Store, cycle: Cycle) -> policies.Spend:
    """What a cycle cost: the CPU-seconds its training measured once it has a candidate, the planned estimate
    before that (or when the trainer did not measure); shots and money as planned.

    A cycle resumed after a crash is charged the CPU time of its last attempt only (the earlier attempts' time
    died with their processes). A cycle with several candidates costs the sum of theirs.
    """
    candidates = candidates_of(store, cycle)
    if candidates:
        return sum((candidate_spend(store, c) for c in candidates), policies.Spend())
    measured = measured_cpu_s(store, cycle)
    planned = CyclePlan.from_dict(cycle.plan).planned
    if measured is None and data_refused(store, cycle):  # stopped before training: it spent its sampling time
        found = store.decisions.list(kind="self-improve", cycle_id=cycle.id, limit=1)
        measured = float(found[-1].evidence.get("sampling_cpu_s", 0.0))
    return planned if measured is None else dataclasses.replace(planned, cpu_seconds=measured)


def data_refused(store: Store, cycle: Cycle) -> bool:
    """Whether a self-improvement round's safeguards stopped the cycle before training (it ended REJECTED with
    no candidate, its decision log's ``self-improve`` entry says ``stop``)."""
    if cycle.state is not CycleState.REJECTED or cycle.candidate_id is not None:
        return False
    found = store.decisions.list(kind="self-improve", cycle_id=cycle.id, limit=1)
    return bool(found) and found[-1].action == "stop"


def cycle_outcome(cycle: Cycle) -> policies.CycleOutcome:
    """How a cycle ended as the policies name it (``RUNNING`` while it runs): the one mapping of states."""
    return policies.CycleOutcome(cycle.state.value) if cycle.state.terminal else policies.CycleOutcome.RUNNING


def cycle_records(store: Store, *, since: datetime | None = None) -> tuple[policies.CycleRecord, ...]:
    """Past and running cycles as the policies see them (spend from the recorded CPU-seconds and shots)."""
    records = []
    for cycle in store.cycles.list(limit=500):
        if since is not None and cycle.started_at < since and cycle.finished_at is not None:
            continue
        spend = cycle_spend(store, cycle)
        outcome = cycle_outcome(cycle)
        finished = None
        if cycle.state.terminal:
            finished = max(cycle.finished_at or cycle.updated_at, cycle.started_at)
        records.append(policies.CycleRecord(cycle.started_at, finished, outcome, spend))
    return tuple(reversed(records))


def trigger_history(
    store: Store, policy: PolicyConfig, *, paused: bool, run_now: bool
) -> policies.TriggerHistory:
    """What the trigger policy decides on: the drift metric's samples of the serving champion since it started
    serving (negated when lower is better), cycles, examples ingested since the last cycle, flags."""
    champion = store.champion.get()
    serving = store.audit.serving_history()
    since = serving[-1].served_from if serving else None
    samples = store.metrics.samples(
        policy.drift_metric,
        since=since,
        labels={"version": champion.version_id} if champion.version_id else None,
    )
    cycles = cycle_records(store)
    last_start = max((c.started_at for c in cycles), default=None)
    new_examples = sum(int(s.value) for s in store.metrics.samples("ingested_examples", since=last_start))
    # A documented series knows its direction (live_error_rate: lower is better); the knob covers the others.
    documented = next(s for s in SERIES if s.matches(policy.drift_metric)).higher_is_better
    higher = policy.drift_higher_is_better if documented is None else documented
    sign = 1.0 if higher else -1.0
    return policies.TriggerHistory(
        metrics=tuple(
            policies.MetricSample(s.at, sign * s.value, str(s.labels.get("version", ""))) for s in samples
        ),
        cycles=cycles,
        new_examples=new_examples,
        champion_since=since if champion.version_id else None,
        paused=paused,
        run_now=run_now,
    )


def rollback_inputs(
    store: Store, champion: str
) -> tuple[policies.PromotionRecord, list[policies.MetricSample]] | None:
    """The rollback policy's inputs for ``champion``: its promotion (with the previous champion's score) and
    its scores since; ``None`` when it was not promoted over another version."""
    serving = store.audit.serving_history()
    if len(serving) < 2 or serving[-1].version_id != champion:
        return None
    previous = serving[-2].version_id
    # None: the base model served before (a champion that had to be retired); nothing to roll back to.
    prev_metric = store.versions.get(previous).metrics.get(EVAL_METRIC) if previous is not None else None
    record = policies.PromotionRecord(
        version=champion,
        previous_version=previous if prev_metric is not None else None,
        promoted_at=serving[-1].served_from,
        previous_metric=float(prev_metric) if prev_metric is not None else None,
    )
    live = [
        policies.MetricSample(s.at, s.value, champion)
        for s in store.metrics.samples(EVAL_METRIC, since=record.promoted_at, labels={"version": champion})
    ]
    return record, live
