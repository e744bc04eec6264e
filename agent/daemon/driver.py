"""Trigger → recipe → cycle: the glue between the pure policies, the cycle state machine and the metrics.

:class:`PolicyCycleDriver` implements :class:`agent.daemon.runtime.CycleDriver`. It reads the policies' inputs
(:mod:`agent.daemon.policy_inputs`), asks :func:`policies.decide_trigger` and the planner
(:mod:`agent.daemon.planner`), records the decisions, runs the cycle with :class:`agent.cycle.machine.CycleRunner`
(training through the injected :class:`~agent.cycle.trainer.Trainer`), tells the recipe learner what ran, and
keeps the Prometheus metrics in step.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import policies
from agent.artifacts.registry import HousekeepingReport
from agent.console import write_report_quietly
from agent.cycle.machine import CycleRunner
from agent.cycle.trainer import CycleInterrupted, Trainer, parallel_slots
from agent.daemon.canary import run_canary
from agent.daemon.commands import RUN_NOW_KEY
from agent.daemon.decision_log import cycle_event_logger, record_decision
from agent.daemon.gate import base_model_scores, make_gate, make_selector
from agent.daemon.planner import Planner, RecipeOverrideError
from agent.daemon.policy_inputs import (
    EVAL_METRIC,
    cycle_outcome,
    rollback_config,
    rollback_inputs,
    trigger_config,
    trigger_history,
)
from agent.daemon.runtime import Runtime
from agent.store import AuditKind, Cycle, CycleState, StoreError

__all__ = ["PolicyCycleDriver"]

log = logging.getLogger("qtha.cycle")


class PolicyCycleDriver:
    """Runs the cycles of one daemon.

    Args:
        trainer_factory: builds the trainer from the runtime (the model trainer in production).
        optuna_storage: the recipe study's storage (URL or object); default beside the database.
    """

    def __init__(self, trainer_factory: Callable[[Runtime], Trainer], *, optuna_storage: Any = None) -> None:
        self._trainer_factory = trainer_factory
        self.planner = Planner(optuna_storage)
        self._trainer: Trainer | None = None
        self._runner: CycleRunner | None = None
        self._runner_epoch: int | None = None
        self._last_trigger: tuple[str, tuple[str, ...]] | None = None
        self._lock = threading.Lock()  # cycles and evaluations share the CPU and the child process: one at a time

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
                make_gate(rt, baseline=lambda: base_model_scores(rt, self.trainer(rt))),
                owner=f"{rt.replica}#{epoch}",
                workdirs=rt.config.state_dir / "cycles",
                on_event=cycle_event_logger(rt),
                canary=functools.partial(run_canary, rt),
                selector=make_selector(rt, baseline=lambda: base_model_scores(rt, self.trainer(rt))),
            )
            self._runner_epoch = epoch
        return self._runner

    # -- CycleDriver -------------------------------------------------------------------------------------------------
    def consider(self, rt: Runtime) -> None:
        with self._lock:
            with rt.commands_lock:  # a consistent view: no command batch half-applied
                run_now = rt.store.overrides.get(RUN_NOW_KEY)
                decision = self._trigger(rt, run_now=run_now is not None)
            if decision.action is not policies.Action.RUN:
                return
            try:
                planned = self.planner.plan_candidates(
                    rt, (run_now or {}).get("recipe"), count=self._parallel_candidates(rt)
                )
            except RecipeOverrideError as exc:  # the CLI validates too; an old queued command may still be bad
                rt.store.overrides.clear(RUN_NOW_KEY, actor=rt.replica, reason=f"cycle --now refused: {exc}")
                rt.set_status(f"idle: {exc}")
                return
            if planned is None:
                return
            (recipe, plan), *more = planned
            if run_now is not None:
                rt.store.overrides.clear(RUN_NOW_KEY, actor=rt.replica, reason="cycle --now consumed")
            reasons = list(decision.codes(policies.ReasonKind.FIRED))
            what = f"recipe {_short(recipe)} ({plan.source})"
            if more:
                what = f"{1 + len(more)} candidates at once, recipes " + " | ".join(_short(r) for r, _ in planned)
            rt.set_status(f"cycle starting: {', '.join(reasons)}; {what}")
            cycle = self.runner(rt).run(trigger_reasons=reasons, recipe=recipe, plan=plan, more=more)
            self._finished(rt, cycle)

    def _parallel_candidates(self, rt: Runtime) -> int:
        """How many candidates the next cycle may train at once: ``[cluster] parallel_candidates``, capped by what
        the trainer can run at once now (a Ray cluster's free CPUs); the budget may cap it further when planning."""
        wanted = rt.config.cluster.parallel_candidates
        return 1 if wanted == 1 else min(wanted, parallel_slots(self.trainer(rt)))

    def resume(self, rt: Runtime) -> None:
        with self._lock:
            runner = self.runner(rt)
            adopted = runner.start()
            if adopted is None:
                failed = [c for c in rt.store.cycles.list(limit=1) if c.state is CycleState.FAILED]
                for cycle in failed:  # recover() may have just failed it (too many resumes): count it
                    if cycle.owner == runner.owner:
                        self._finished(rt, cycle)
                self.planner.tell_lost(rt)  # the daemon may have died between a cycle's end and the learner's tell
                return
            rt.set_status(f"resuming cycle {adopted.id} from {adopted.state} (resume #{adopted.resumes})")
            cycle = runner.resume(adopted)
            self._finished(rt, cycle)

    def evaluate(self, rt: Runtime, version_id: str, *, reason: str) -> dict[str, Any] | None:
        with self._lock:
            art = rt.registry.load(version_id)
            rt.set_status(f"evaluating {version_id} ({reason})")
            rt.liveness.step_started(
                "evaluate", limit_s=rt.config.daemon.step_limit_s, what=f"evaluation of {version_id}"
            )
            # A fresh sample of the held-out pool per evaluation window: the recorded series varies as a real
            # metric does (a fixed set would repeat one number forever and no drift detector could fire), and
            # every recorded sample is drawn the same way, so drift compares like with like.
            window = evaluation_window(rt)
            try:
                outcome = self.trainer(rt).evaluate(art.path, version_id=version_id, window=window)
            except CycleInterrupted:  # stopping: the next scheduled evaluation does it
                return None
            finally:
                rt.liveness.step_finished("evaluate")
            metrics = {f"eval_{k}": float(v) for k, v in outcome.metrics.items()} | {EVAL_METRIC: outcome.mean}
            rt.store.metrics.record_many(
                ((k, v, {"version": version_id, "window": str(window)}) for k, v in metrics.items()), source="daemon"
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
    def _trigger(self, rt: Runtime, *, run_now: bool) -> policies.Decision:
        policy = rt.policy()
        history = trigger_history(rt.store, policy, paused=rt.paused(), run_now=run_now)
        decision = policies.decide_trigger(history, rt.clock.now(), trigger_config(policy))
        rt.metrics.decision("trigger", str(decision.action))
        key = (str(decision.action), decision.codes())
        if key != self._last_trigger or decision.action is policies.Action.RUN:
            # A waiting trigger is re-evaluated every minute; record it when its reasons change, not each time.
            record_decision(rt, decision)
            self._last_trigger = key
        if decision.action is not policies.Action.RUN:
            champion = rt.store.champion.get().version_id
            rt.set_status(f"idle: champion {champion or 'none'}; trigger waits ({', '.join(decision.codes())})")
        return decision

    def _finished(self, rt: Runtime, cycle: Cycle) -> None:
        if not cycle.state.terminal:
            rt.set_status(f"cycle {cycle.id} interrupted in {cycle.state}; it resumes on the next start")
            return
        outcome = cycle_outcome(cycle)
        finished = cycle.finished_at or rt.clock.now()
        rt.metrics.cycle_finished(
            str(outcome), duration_s=(finished - cycle.started_at).total_seconds(), finished_at=finished.timestamp()
        )
        if outcome is policies.CycleOutcome.PROMOTED:
            rt.metrics.promoted()
        champion = rt.store.champion.get().version_id
        if champion is not None:
            rt.metrics.set_champion(champion, rt.store.versions.get(champion).numeric_metrics())
        self.planner.tell(rt, cycle)
        write_report_quietly(rt.store, rt.config.state_dir, cycle.id)  # cycles/<n>/report.html
        what = cycle.outcome or cycle.error or str(outcome)
        rt.set_status(f"idle: cycle {cycle.id} {outcome} ({what[:160]}); champion {champion or 'none'}")

    def _maybe_roll_back(self, rt: Runtime, champion: str) -> None:
        inputs = rollback_inputs(rt.store, champion)
        if inputs is None:
            return
        policy = rt.policy()
        decision = policies.decide_rollback(*inputs, rt.clock.now(), rollback_config(policy))
        rt.metrics.decision("rollback", str(decision.action))
        if decision.action is not policies.Action.ROLLBACK:
            return
        record_decision(rt, decision)
        if not policy.auto_rollback:
            rt.store.audit.note(
                AuditKind.OVERRIDE, actor="rollback policy", reason="rollback advised but policy.auto_rollback is false"
            )
            return
        try:
            state = rt.registry.rollback(actor="rollback policy", reason="; ".join(decision.codes()), automatic=True)
        except StoreError as exc:  # pinned, moved or nothing to return to: recorded, the champion keeps serving
            log.warning("automatic rollback refused: %s", exc)
            return
        rt.metrics.rolled_back()
        rt.metrics.set_champion(state.version_id, {})
        log.warning("rolled back %s → %s", champion, state.version_id)


def evaluation_window(rt: Runtime) -> int:
    """The scheduled evaluation's window number: one per ``scheduler.evaluate_interval_s`` of the clock."""
    return int(rt.clock.now().timestamp() // rt.config.scheduler.evaluate_interval_s)


def _short(recipe: policies.Recipe) -> str:
    keys = ("adapter", "qnn_mode", "qubits", "layers", "bond_dim", "rank", "steps", "learning_rate", "backend")
    values = recipe.to_dict()
    return ", ".join(f"{k}={values[k]}" for k in keys if values.get(k) not in (None, 0, ""))
