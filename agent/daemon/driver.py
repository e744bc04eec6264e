"""Trigger → recipe → cycle: the glue between the pure policies, the cycle state machine and the metrics.

:class:`PolicyCycleDriver` implements :class:`agent.daemon.runtime.CycleDriver`. It reads recorded history from the store,
asks :func:`policies.decide_trigger` and :func:`policies.propose_recipe`, records both decisions, runs the cycle
with :class:`agent.cycle.machine.CycleRunner` (training through the injected :class:`~agent.cycle.trainer.Trainer`),
reports the outcome back to the recipe learner, and keeps the Prometheus metrics in step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import policies
from agent.artifacts.registry import HousekeepingReport
from agent.child.trainer import TrainingFailedError
from agent.cycle.machine import CycleRunner
from agent.cycle.trainer import CycleInterrupted, EvalOutcome, Trainer
from agent.daemon.commands import RUN_NOW_KEY
from agent.daemon.policy_inputs import (
    budget_per_day,
    calibrated_cost_model,
    cycle_records,
    cycle_spend,
    promotion_config,
    recipe_config,
    rollback_config,
    trigger_config,
)
from agent.daemon.runtime import Runtime
from agent.store import AuditKind, Cycle, CycleState, StoreError

__all__ = ["PolicyCycleDriver", "make_gate"]

log = logging.getLogger("qtha.cycle")

EVAL_METRIC = "eval_mean"  # the daemon's own held-out score of a version (higher is better)
_OUTCOME = {CycleState.PROMOTED: "promoted", CycleState.REJECTED: "rejected", CycleState.FAILED: "failed"}


def make_gate(
    rt: Runtime, *, baseline: Callable[[], EvalOutcome | None] | None = None
) -> Callable[[EvalOutcome, EvalOutcome | None, datetime], policies.Decision]:
    """The promotion gate of the cycle: :func:`policies.decide_promotion` with the effective policy.

    Example ids may carry their slice as ``"<slice>/<id>"``; per-slice no-regression checks use it.

    Args:
        rt: the runtime (effective policy, metrics).
        baseline: scores of the base model without an adapter; with no champion yet, the first candidate is
            compared with it (an adapter that makes the base worse is not promoted), else ``None``.
    """

    def evaluation(outcome: EvalOutcome) -> policies.Evaluation:
        scores = tuple(
            policies.ExampleScore(
                example_id=key, score=float(value), slice=key.split("/", 1)[0] if "/" in key else "all"
            )
            for key, value in sorted(outcome.scores.items())
        )
        return policies.Evaluation(
            version=outcome.version_id,
            scores=scores,
            smoke_ok=bool(outcome.metrics.get("smoke_ok", 1.0)),
            trainable_params=int(outcome.metrics.get("trainable_params", 0)),
        )

    def gate(candidate: EvalOutcome, champion: EvalOutcome | None, now: datetime) -> policies.Decision:
        against = champion
        if against is None and baseline is not None:
            against = baseline()
        decision = policies.decide_promotion(
            evaluation(candidate),
            None if against is None else evaluation(against),
            now,
            promotion_config(rt.policy()),
            seed=rt.config.training.seed,
        )
        if against is not None:
            compared = {"champion_mean": against.mean, "compared_with": against.version_id}
            decision = policies.Decision(
                decision.policy,
                decision.action,
                decision.at,
                decision.reasons,
                {**decision.evidence, **compared},
            )
        rt.metrics.decision("promotion", str(decision.action))
        for reason in decision.reasons:
            log.info("promotion %s: %s [%s] %s", decision.action, reason.code, reason.kind, reason.message)
        return decision

    return gate


class PolicyCycleDriver:
    """Runs the cycles of one daemon.

    Args:
        trainer_factory: builds the trainer from the runtime (the model trainer in production).
        optuna_storage: the recipe study's storage (URL or object); default beside the database.
    """

    def __init__(self, trainer_factory: Callable[[Runtime], Trainer], *, optuna_storage: Any = None) -> None:
        self._trainer_factory = trainer_factory
        self._storage = optuna_storage
        self._trainer: Trainer | None = None
        self._runner: CycleRunner | None = None
        self._runner_epoch: int | None = None
        self._last_trigger: tuple[str, tuple[str, ...]] | None = None
        self._lock = threading.Lock()  # cycles and evaluations share the CPU and the child process: one at a time

    # -- collaborators ---------------------------------------------------------------------------------------------
    def trainer(self, rt: Runtime) -> Trainer:
        if self._trainer is None:
            self._trainer = self._trainer_factory(rt)
        return self._trainer

    def runner(self, rt: Runtime) -> CycleRunner:
        """A cycle runner owned by ``<replica>#<lease epoch>``: unique per term, so a new term adopts cleanly."""
        epoch = rt.leadership.epoch
        if self._runner is None or self._runner_epoch != epoch:
            self._runner = CycleRunner(
                rt.registry,
                self.trainer(rt),
                make_gate(rt, baseline=lambda: self._base_model_scores(rt)),
                owner=f"{rt.replica}#{epoch}",
                workdirs=rt.config.state_dir / "cycles",
                on_event=self._event_logger(rt),
            )
            self._runner_epoch = epoch
        return self._runner

    def _base_model_scores(self, rt: Runtime) -> EvalOutcome | None:
        """The base model's held-out scores (an empty artifact: no adapter), cached like any evaluation."""
        empty = rt.config.state_dir / "work" / "base-model"
        empty.mkdir(parents=True, exist_ok=True)
        try:
            return self.trainer(rt).evaluate(empty, version_id="base")
        except (
            TrainingFailedError,
            FileNotFoundError,
        ) as exc:  # no baseline: the gate judges the candidate alone
            log.warning("could not score the base model for comparison: %s", exc)
            return None

    def storage(self, rt: Runtime) -> Any:
        if self._storage is None:
            url = rt.config.database_url
            # Optuna opens its own connections without SQLite's busy timeout: keep its study in its own file.
            self._storage = (
                f"sqlite:///{rt.config.state_dir / 'recipes.db'}" if url.startswith("sqlite") else url
            )
        return self._storage

    # -- CycleDriver -------------------------------------------------------------------------------------------------
    def consider(self, rt: Runtime) -> None:
        with self._lock:
            with rt.commands_lock:  # a consistent view: no command batch half-applied
                run_now = rt.store.overrides.get(RUN_NOW_KEY)
                decision = self._trigger(rt, run_now=run_now)
            if decision.action is not policies.Action.RUN:
                return
            recipe = self._plan(rt, run_now)
            if recipe is None:
                return
            if run_now is not None:
                rt.store.overrides.clear(RUN_NOW_KEY, actor=rt.replica, reason="cycle --now consumed")
            reasons = list(decision.codes(policies.ReasonKind.FIRED))
            rt.set_status(f"cycle starting: {', '.join(reasons)}; recipe {_short(recipe)}")
            cycle = self.runner(rt).run(
                trigger_reasons=reasons, recipe=recipe, backend=str(recipe["backend"])
            )
            self._finished(rt, cycle)

    def resume(self, rt: Runtime) -> None:
        with self._lock:
            runner = self.runner(rt)
            adopted = runner.start()
            if adopted is None:
                failed = [c for c in rt.store.cycles.list(limit=1) if c.state is CycleState.FAILED]
                for cycle in failed:  # recover() may have just failed it (too many resumes): count it
                    if cycle.owner == runner.owner:
                        self._finished(rt, cycle)
                return
            rt.set_status(f"resuming cycle {adopted.id} from {adopted.state} (resume #{adopted.resumes})")
            cycle = runner.resume(adopted)
            self._finished(rt, cycle)

    def evaluate(self, rt: Runtime, version_id: str, *, reason: str) -> dict[str, Any] | None:
        with self._lock:
            art = rt.registry.load(version_id)
            rt.set_status(f"evaluating {version_id} ({reason})")
            try:
                outcome = self.trainer(rt).evaluate(art.path, version_id=version_id)
            except CycleInterrupted:  # stopping: the next scheduled evaluation does it
                return None
            metrics = {f"eval_{k}": float(v) for k, v in outcome.metrics.items()} | {
                EVAL_METRIC: outcome.mean
            }
            rt.store.versions.update_metrics(version_id, metrics)
            rt.store.metrics.record_many(
                ((k, v, {"version": version_id}) for k, v in metrics.items()), source="daemon"
            )
            champion = rt.store.champion.get().version_id
            if version_id == champion:
                rt.metrics.set_champion(champion, metrics)
                self._maybe_roll_back(rt, champion)
            rt.set_status(
                f"idle: champion {rt.store.champion.get().version_id}, {version_id} scored {outcome.mean:.4g}"
            )
            return metrics

    def housekeeping(self, rt: Runtime) -> HousekeepingReport | None:
        if not self._lock.acquire(blocking=False):
            return None  # a cycle or an evaluation is running; its files are in use
        try:
            return self.runner(rt).housekeeping()
        finally:
            self._lock.release()

    # -- phases ------------------------------------------------------------------------------------------------------
    def _trigger(self, rt: Runtime, *, run_now: dict[str, Any] | None) -> policies.Decision:
        now = rt.clock.now()
        policy = rt.policy()
        champion = rt.store.champion.get()
        serving = rt.store.audit.serving_history()
        since = serving[-1].served_from if serving else None
        samples = rt.store.metrics.samples(
            policy.drift_metric,
            since=since,
            labels={"version": champion.version_id} if champion.version_id else None,
        )
        cycles = cycle_records(rt.store)
        last_start = max((c.started_at for c in cycles), default=None)
        new_examples = sum(
            int(s.value) for s in rt.store.metrics.samples("ingested_examples", since=last_start)
        )
        history = policies.TriggerHistory(
            metrics=tuple(
                policies.MetricSample(
                    s.at,
                    s.value if policy.drift_higher_is_better else -s.value,
                    str(s.labels.get("version", "")),
                )
                for s in samples
            ),
            cycles=cycles,
            new_examples=new_examples,
            champion_since=since if champion.version_id else None,
            paused=rt.paused(),
            run_now=run_now is not None,
        )
        decision = policies.decide_trigger(history, now, trigger_config(policy))
        rt.metrics.decision("trigger", str(decision.action))
        key = (str(decision.action), decision.codes())
        if key != self._last_trigger or decision.action is policies.Action.RUN:
            # A waiting trigger is re-evaluated every minute; record it when its reasons change, not each time.
            self._record(rt, decision)
            self._last_trigger = key
        if decision.action is not policies.Action.RUN:
            rt.set_status(
                f"idle: champion {champion.version_id or 'none'}; trigger waits "
                f"({', '.join(decision.codes())})"
            )
        return decision

    def _plan(self, rt: Runtime, run_now: dict[str, Any] | None) -> dict[str, Any] | None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        now = rt.clock.now()
        left = policies.remaining_budget(
            policies.Budget(per_day=budget_per_day(rt.policy())), cycle_records(rt.store), now
        )
        cost_model, calibration = calibrated_cost_model(rt.store)
        config = recipe_config(rt.config, cost_model)
        proposal = policies.propose_recipe(
            left, now=now, storage=self.storage(rt), config=config, seed=rt.config.training.seed
        )
        self._record(rt, proposal.decision)
        rt.metrics.decision("recipe", str(proposal.decision.action))
        if proposal.recipe is None:
            rt.set_status(f"idle: no recipe fits the budget ({', '.join(proposal.decision.codes())})")
            return None
        recipe = proposal.recipe.to_dict()
        overrides = dict((run_now or {}).get("recipe") or {})
        recipe.update(overrides)
        estimate = proposal.estimate
        recipe.update(
            _trial=proposal.trial_number,
            _planned_cpu_s=estimate.spend.cpu_seconds if estimate else 0.0,
            _cpu_calibration=calibration,  # the estimate's model was scaled by this (see policyconf.cpu_history)
            _spent_shots=estimate.spend.shots if estimate else 0,
            _spent_money=estimate.spend.money if estimate else 0.0,
            seq_len=int(overrides.get("seq_len", rt.config.training.seq_len)),
            batch_size=int(overrides.get("batch_size", rt.config.training.batch_size)),
            seed=int(overrides.get("seed", rt.config.training.seed)),
        )
        return recipe

    def _finished(self, rt: Runtime, cycle: Cycle) -> None:
        if not cycle.state.terminal:
            rt.set_status(f"cycle {cycle.id} interrupted in {cycle.state}; it resumes on the next start")
            return
        outcome = _OUTCOME[cycle.state]
        if cycle.state is CycleState.REJECTED and (cycle.outcome or "").startswith("held"):
            outcome = "held"
        finished = cycle.finished_at or rt.clock.now()
        rt.metrics.cycle_finished(
            outcome,
            duration_s=(finished - cycle.started_at).total_seconds(),
            finished_at=finished.timestamp(),
        )
        if outcome == "promoted":
            rt.metrics.promoted()
        champion = rt.store.champion.get().version_id
        if champion is not None:
            values = rt.store.versions.get(champion).metrics
            rt.metrics.set_champion(
                champion,
                {
                    k: float(v)
                    for k, v in values.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                },
            )
        self._tell_learner(rt, cycle)
        what = cycle.outcome or cycle.error or outcome
        rt.set_status(f"idle: cycle {cycle.id} {outcome} ({what[:160]}); champion {champion or 'none'}")

    def _tell_learner(self, rt: Runtime, cycle: Cycle) -> None:
        trial = cycle.recipe.get("_trial")
        if trial is None:
            return
        gain = None
        if cycle.state is not CycleState.FAILED:
            found = rt.store.decisions.list(kind="promotion", cycle_id=cycle.id, limit=1)
            if found:
                evidence = found[-1].evidence
                cand, champ = evidence.get("candidate_mean"), evidence.get("champion_mean")
                gain = None if cand is None else float(cand) - float(champ if champ is not None else 0.0)
        spend = cycle_spend(rt.store, cycle)
        try:
            policies.record_recipe_outcome(
                int(trial),
                policies.RecipeOutcome(gain=gain, spend=spend),
                storage=self.storage(rt),
                config=recipe_config(rt.config),
            )
        except policies.PolicyInputError as exc:  # e.g. the trial was already told before a restart
            log.info("recipe learner not told about cycle %s: %s", cycle.id, exc)

    def _maybe_roll_back(self, rt: Runtime, champion: str) -> None:
        policy = rt.policy()
        serving = rt.store.audit.serving_history()
        if len(serving) < 2 or serving[-1].version_id != champion:
            return
        previous = serving[-2].version_id
        prev_metric = rt.store.versions.get(previous).metrics.get(EVAL_METRIC)
        record = policies.PromotionRecord(
            version=champion,
            previous_version=previous if prev_metric is not None else None,
            promoted_at=serving[-1].served_from,
            previous_metric=float(prev_metric) if prev_metric is not None else None,
        )
        live = [
            policies.MetricSample(s.at, s.value, champion)
            for s in rt.store.metrics.samples(
                EVAL_METRIC, since=record.promoted_at, labels={"version": champion}
            )
        ]
        decision = policies.decide_rollback(record, live, rt.clock.now(), rollback_config(policy))
        rt.metrics.decision("rollback", str(decision.action))
        if decision.action is not policies.Action.ROLLBACK:
            return
        self._record(rt, decision)
        if not policy.auto_rollback:
            rt.store.audit.note(
                AuditKind.OVERRIDE,
                actor="rollback policy",
                reason="rollback advised but policy.auto_rollback is false",
            )
            return
        try:
            state = rt.registry.rollback(
                actor="rollback policy", reason="; ".join(decision.codes()), automatic=True
            )
        except (
            StoreError
        ) as exc:  # pinned, moved or nothing to return to: recorded, the champion keeps serving
            log.warning("automatic rollback refused: %s", exc)
            return
        rt.metrics.rolled_back()
        rt.metrics.set_champion(state.version_id, {})
        log.warning("rolled back %s → %s", champion, state.version_id)

    # -- records -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _record(rt: Runtime, decision: policies.Decision, *, cycle_id: int | None = None) -> None:
        rt.store.decisions.record(
            decision.policy,
            str(decision.action),
            reasons=[r.to_dict() for r in decision.reasons],  # type: ignore[misc]  # JSON column, as the cycle
            evidence=decision.to_dict()["evidence"],
            cycle_id=cycle_id,
        )
        for reason in decision.reasons:
            log.info(
                "%s %s: %s [%s] %s",
                decision.policy,
                decision.action,
                reason.code,
                reason.kind,
                reason.message,
            )

    @staticmethod
    def _event_logger(rt: Runtime) -> Callable[[str, Mapping[str, Any]], None]:
        def on_event(name: str, fields: Mapping[str, Any]) -> None:
            log.info("cycle event %s %s", name, dict(fields))
            if name == "begin":
                rt.metrics.cycle_started()
            elif name == "state":
                rt.set_status(f"cycle {fields['cycle']}: {fields['from']} → {fields['to']}")
            elif name == "checkpoint":
                rt.set_status(f"cycle {fields['cycle']}: training, checkpoint at step {fields['step']}")

        return on_event


def _short(recipe: Mapping[str, Any]) -> str:
    keys = (
        "adapter",
        "qnn_mode",
        "qubits",
        "layers",
        "bond_dim",
        "rank",
        "steps",
        "learning_rate",
        "backend",
    )
    return ", ".join(f"{k}={recipe[k]}" for k in keys if recipe.get(k) not in (None, 0, ""))
