"""From the daemon's typed configuration and recorded history to the pure policies' inputs.

The effective policy is ``[policy]`` of the config file with the operator's run-time overrides on top
(``qtha policy set KEY=VALUE`` stores ``policy.KEY`` in the overrides table). Both are validated by the same
pydantic model, so a bad override is refused with the same message a bad file would get.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

import policies
from agent.config import ConfigError, PolicyConfig, QthaConfig
from agent.config import RecipeConfig as RecipeSection
from agent.store import Cycle, CycleState, Store

__all__ = [
    "OVERRIDE_PREFIX",
    "cycle_records",
    "effective_policy",
    "parse_policy_value",
    "promotion_config",
    "recipe_config",
    "rollback_config",
    "trigger_config",
]

OVERRIDE_PREFIX = "policy."
_OUTCOME_OF_STATE = {
    CycleState.PROMOTED: "promoted",
    CycleState.REJECTED: "rejected",
    CycleState.FAILED: "failed",
}


def parse_policy_value(base: PolicyConfig, key: str, raw: str) -> Any:
    """Validates ``KEY=VALUE`` from the command line against the policy schema; returns the JSON value to store.

    Raises:
        ConfigError: unknown key or invalid value (names both and lists the keys).
    """
    if key not in PolicyConfig.model_fields:
        raise ConfigError(
            f"unknown policy key {key!r}; known keys: {', '.join(sorted(PolicyConfig.model_fields))}"
        )
    data = base.model_dump(mode="json")
    data[key] = raw
    try:
        checked = PolicyConfig.model_validate_json(_json_with_raw(data, key, raw))
    except ValidationError as exc:
        raise ConfigError(f"policy {key} = {raw!r}: {exc.errors()[0]['msg']}") from None
    return checked.model_dump(mode="json")[key]


def _json_with_raw(data: dict[str, Any], key: str, raw: str) -> str:
    import json

    # A raw value that parses as JSON (numbers, booleans, [8, 18], null) is used as such; anything else is a string.
    try:
        data[key] = json.loads(raw)
    except ValueError:
        data[key] = raw
    return json.dumps(data)


def effective_policy(config: QthaConfig, overrides: Mapping[str, Any]) -> PolicyConfig:
    """``config.policy`` with the ``policy.*`` overrides applied (invalid overrides raise ConfigError)."""
    changes = {k[len(OVERRIDE_PREFIX) :]: v for k, v in overrides.items() if k.startswith(OVERRIDE_PREFIX)}
    if not changes:
        return config.policy
    try:
        return PolicyConfig.model_validate({**config.policy.model_dump(mode="json"), **changes})
    except ValidationError as exc:
        raise ConfigError(
            f"stored policy override is invalid ({exc.errors()[0]['msg']}); `qtha policy set` it again"
        ) from None


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


def cold_start_recipe(
    section: RecipeSection, *, steps: int, learning_rate: float, backend: str, targets: tuple[str, ...]
) -> policies.Recipe:
    """The first cycle's recipe from ``[recipe]`` and ``[training]`` (small enough for a 2-core machine)."""
    if section.adapter == "lora":
        return policies.Recipe(
            adapter="lora",
            qnn_mode=None,
            qubits=0,
            layers=0,
            bond_dim=0,
            rank=section.rank,
            learning_rate=learning_rate,
            steps=steps,
            backend=backend,
            targets=targets,
        )
    return policies.Recipe(
        adapter="qtha",
        qnn_mode=section.qnn_mode,
        qubits=section.qubits,
        layers=section.layers,
        bond_dim=section.bond_dim,
        rank=0,
        learning_rate=learning_rate,
        steps=steps,
        backend=backend,
        targets=targets,
    )


def measured_cpu_s(store: Store, cycle: Cycle) -> float | None:
    """The CPU-seconds a cycle's training measured (its candidate's ``train_cpu_s``), if it has one."""
    version = store.versions.find(cycle.candidate_id) if cycle.candidate_id else None
    value = version.metrics.get("train_cpu_s") if version is not None else None
    return float(value) if isinstance(value, int | float) else None


def cpu_history(store: Store, *, limit: int = 50) -> list[tuple[float, float]]:
    """(uncalibrated estimate, measured) training CPU-seconds of recent finished cycles, oldest first.

    A cycle planned with a calibrated model recorded its factor (``_cpu_calibration``); dividing it out gives
    every pair the same reference (the uncalibrated model), so calibrations do not compound.
    """
    pairs = []
    for cycle in store.cycles.list(limit=limit):
        planned = float(cycle.recipe.get("_planned_cpu_s", 0.0) or 0.0)
        factor = float(cycle.recipe.get("_cpu_calibration", 1.0) or 1.0)
        measured = measured_cpu_s(store, cycle)
        if planned > 0 and measured is not None:
            pairs.append((planned / factor, measured))
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
    cold = cold_start_recipe(
        section,
        steps=min(training.steps, section.max_steps),
        learning_rate=training.learning_rate,
        backend=backend,
        targets=config.model.targets,
    )
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
    )
    return policies.RecipeConfig(space=space, cold_start=cold, cost_model=cost_model or policies.CostModel())


def cycle_spend(store: Store, cycle: Cycle) -> policies.Spend:
    """What a cycle cost: the CPU-seconds its training measured once it has a candidate, the planned estimate
    before that (or when the trainer did not measure); shots and money as planned.

    A cycle resumed after a crash is charged the CPU time of its last attempt only (the earlier attempts' time
    died with their processes).
    """
    measured = measured_cpu_s(store, cycle)
    return policies.Spend(
        cpu_seconds=float(cycle.recipe.get("_planned_cpu_s", 0.0) or 0.0) if measured is None else measured,
        shots=int(cycle.recipe.get("_spent_shots", 0) or 0),
        money=float(cycle.recipe.get("_spent_money", 0.0) or 0.0),
    )


def cycle_records(store: Store, *, since: datetime | None = None) -> tuple[policies.CycleRecord, ...]:
    """Past and running cycles as the policies see them (spend from the recorded CPU-seconds and shots)."""
    records = []
    for cycle in store.cycles.list(limit=500):
        if since is not None and cycle.started_at < since and cycle.finished_at is not None:
            continue
        spend = cycle_spend(store, cycle)
        if cycle.state.terminal:
            outcome = _OUTCOME_OF_STATE[cycle.state]
            if cycle.state is CycleState.REJECTED and (cycle.outcome or "").startswith("held"):
                outcome = "held"
            finished = cycle.finished_at or cycle.updated_at
            records.append(
                policies.CycleRecord(cycle.started_at, max(finished, cycle.started_at), outcome, spend)
            )
        else:
            records.append(policies.CycleRecord(cycle.started_at, None, "running", spend))
    return tuple(reversed(records))
