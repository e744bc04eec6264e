"""How a cycle trains, and telling the recipe learner what really ran.

The learner (:func:`policies.propose_recipe`, an Optuna study) proposes a recipe; the daemon's ``[training]``
settings fill the fields it does not search; an operator's ``cycle --now --recipe K=V`` changes fields on top.
The cycle stores the typed :class:`policies.Recipe` and, apart from it, the :class:`~agent.cycle.plan.CyclePlan`
(where the recipe came from, what it was planned to cost). When the cycle ends, the learner is told exactly what
ran: its own trial's outcome, or, for an operator's recipe, a trial of its own (the displaced proposal is withdrawn
so it never gets an outcome that is not its own).

A cycle may train several candidates at once (:meth:`Planner.plan_candidates`): the learner is asked that many
trials, together within today's budget, and when the cycle ends every one of them is told its own candidate's
outcome — the chosen one's, the rejected ones' and a failed one's alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import policies
from agent.config import QthaConfig
from agent.cycle.plan import CyclePlan, PlanSource
from agent.daemon.decision_log import record_decision
from agent.daemon.policy_inputs import (
    budget_per_day,
    calibrated_cost_model,
    candidate_spend,
    candidates_of,
    cold_start_recipe,
    cycle_records,
    cycle_spend,
    data_refused,
    recipe_config,
    run_settings,
)
from agent.daemon.runtime import Runtime
from agent.store import CandidateState, Cycle, CycleCandidate, CycleState

__all__ = ["Planner", "RecipeOverrideError", "check_override"]

log = logging.getLogger("qtha.cycle")


class RecipeOverrideError(ValueError):
    """An operator's recipe override does not make a valid recipe (the message names the field)."""


class Planner:
    """Plans cycles with the recipe learner and tells it the outcomes.

    Args:
        storage: the Optuna storage of the learner's study (URL or object); default: a SQLite file beside a SQLite
            database (Optuna opens its own connections without SQLite's busy timeout), else the database itself.
    """

    def __init__(self, storage: Any = None) -> None:
        self._storage = storage

    def storage(self, rt: Runtime) -> Any:
        if self._storage is None:
            url = rt.config.database_url
            self._storage = f"sqlite:///{rt.config.state_dir / 'recipes.db'}" if url.startswith("sqlite") else url
        return self._storage

    def plan(
        self, rt: Runtime, overrides: Mapping[str, Any] | None = None
    ) -> tuple[policies.Recipe, CyclePlan] | None:
        """The next cycle's recipe and plan, or ``None`` when no recipe fits the budget (recorded).

        Raises:
            RecipeOverrideError: ``overrides`` make an invalid recipe; the learner's proposal is withdrawn.
        """
        planned = self.plan_candidates(rt, overrides, count=1)
        return None if planned is None else planned[0]

    def plan_candidates(
        self, rt: Runtime, overrides: Mapping[str, Any] | None = None, *, count: int
    ) -> list[tuple[policies.Recipe, CyclePlan]] | None:
        """Up to ``count`` recipes and plans for candidates trained at once (fewer when the budget does not hold
        more), or ``None`` when no recipe fits the budget (recorded). An operator's recipe and ``[recipe] learn =
        false`` plan one candidate: there is nothing to search beside a recipe that was chosen.

        Raises:
            RecipeOverrideError: ``overrides`` make an invalid recipe; the learner's proposals are withdrawn.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        now = rt.clock.now()
        left = policies.remaining_budget(
            policies.Budget(per_day=budget_per_day(rt.policy())), cycle_records(rt.store), now
        )
        cost_model, calibration = calibrated_cost_model(rt.store)
        config = recipe_config(rt.config, cost_model)
        if not rt.config.recipe.learn:
            fixed = self._fixed_recipe(rt, config, left, calibration, overrides)
            return None if fixed is None else [fixed]
        proposals = policies.propose_recipes(
            left, count=1 if overrides else count, now=now, storage=self.storage(rt), config=config,
            seed=rt.config.training.seed,
        )
        planned = []
        for proposal in proposals:
            record_decision(rt, proposal.decision)
            rt.metrics.decision("recipe", str(proposal.decision.action))
            if proposal.recipe is None or proposal.estimate is None or proposal.trial_number is None:
                rt.set_status(f"idle: no recipe fits the budget ({', '.join(proposal.decision.codes())})")
                return None
            recipe = dataclasses.replace(proposal.recipe, **run_settings(rt.config))
            spend = proposal.estimate.spend
            planned.append((recipe, CyclePlan(
                source=PlanSource.LEARNER,
                trial=proposal.trial_number,
                planned_cpu_s=spend.cpu_seconds,
                planned_shots=spend.shots,
                planned_money=spend.money,
                cpu_calibration=calibration,  # the estimate's model was scaled by this (see policy_inputs.cpu_history)
            )))
        if not overrides:
            return planned
        # The operator's recipe replaces the proposal: the proposal never runs, so it never gets an outcome.
        [(recipe, plan)] = planned
        assert plan.trial is not None  # a learner's proposal
        policies.withdraw_proposal(plan.trial, storage=self.storage(rt), config=config)
        return [(_overridden(recipe, overrides), dataclasses.replace(plan, source=PlanSource.OPERATOR, trial=None))]

    def _fixed_recipe(
        self,
        rt: Runtime,
        config: policies.RecipeConfig,
        left: policies.Spend,
        calibration: float,
        overrides: Mapping[str, Any] | None,
    ) -> tuple[policies.Recipe, CyclePlan] | None:
        """``[recipe] learn = false``: every cycle trains the cold-start recipe (or the operator's)."""
        source = PlanSource.OPERATOR if overrides else PlanSource.CONFIG
        recipe = _overridden(cold_start_recipe(rt.config), overrides or {})
        backend = next((b for b in config.space.backends if b.name == recipe.backend), None)
        option = backend or policies.BackendOption(name=recipe.backend)
        spend = policies.estimate_cost(recipe, option, config.cost_model).spend
        if not spend.fits_within(left) and source is PlanSource.CONFIG:
            rt.set_status("idle: the configured recipe does not fit today's budget")
            return None
        return recipe, CyclePlan(
            source=source,
            planned_cpu_s=spend.cpu_seconds,
            planned_shots=spend.shots,
            planned_money=spend.money,
            cpu_calibration=calibration,
        )

    def tell(self, rt: Runtime, cycle: Cycle) -> None:
        """Tells the learner how the recipe that ran did (gain against the champion, the spend measured); for a
        cycle with several candidates, how each did."""
        candidates = candidates_of(rt.store, cycle)
        if candidates:
            for candidate in candidates:
                self._tell_candidate(rt, cycle, candidate)
            return
        plan = CyclePlan.from_dict(cycle.plan)
        if plan.source is PlanSource.CONFIG or not cycle.recipe:
            return
        gain = None
        if cycle.state is not CycleState.FAILED:
            found = rt.store.decisions.list(kind="promotion", cycle_id=cycle.id, limit=1)
            if found:
                evidence = found[-1].evidence
                cand, champ = evidence.get("candidate_mean"), evidence.get("champion_mean")
                gain = None if cand is None else float(cand) - float(champ if champ is not None else 0.0)
            elif data_refused(rt.store, cycle):  # a recipe whose samples collapsed: it gained nothing, at a cost
                gain = 0.0
        outcome = policies.RecipeOutcome(gain=gain, spend=cycle_spend(rt.store, cycle))
        config = recipe_config(rt.config)
        try:
            if plan.source is PlanSource.LEARNER and plan.trial is not None:
                policies.record_recipe_outcome(plan.trial, outcome, storage=self.storage(rt), config=config)
                return
            recipe = policies.Recipe.from_dict(cycle.recipe)
            trial = policies.record_operator_recipe(recipe, outcome, storage=self.storage(rt), config=config)
            if trial is None:
                log.info("recipe learner not told about cycle %s: its recipe lies outside the search space", cycle.id)
            else:
                log.info("recipe learner told cycle %s's operator recipe as trial %d", cycle.id, trial)
        except policies.PolicyInputError as exc:  # e.g. the trial was already told before a restart
            log.info("recipe learner not told about cycle %s: %s", cycle.id, exc)


    def _tell_candidate(self, rt: Runtime, cycle: Cycle, candidate: CycleCandidate) -> None:
        """One candidate's trial: its gain when it was judged (chosen or rejected), else failed."""
        plan = CyclePlan.from_dict(candidate.plan)
        if plan.trial is None:
            return
        gain = candidate.evidence.get("gain") if candidate.state in (CandidateState.CHOSEN, CandidateState.REJECTED) else None
        outcome = policies.RecipeOutcome(
            gain=None if gain is None else float(gain), spend=candidate_spend(rt.store, candidate)
        )
        try:
            score = policies.record_recipe_outcome(
                plan.trial, outcome, storage=self.storage(rt), config=recipe_config(rt.config)
            )
        except policies.PolicyInputError as exc:  # e.g. already told before a restart
            log.info("recipe learner not told about cycle %s candidate %s: %s", cycle.id, candidate.slot, exc)
            return
        log.info("recipe learner told trial %d (cycle %s candidate %s, %s): %s", plan.trial, cycle.id,
                 candidate.slot, candidate.state, "failed" if score is None else f"{score:.4g}")

    def tell_lost(self, rt: Runtime) -> None:
        """Tells the learner the newest finished cycle's outcome if its trial still awaits it: the daemon died between
        the cycle's end and :meth:`tell`. Without this the next proposal marks the trial abandoned (failed), and the
        learner never learns how the recipe did. Only the newest cycle can be in that state: a newer cycle's proposal
        would have closed the trial already."""
        import optuna

        newest = rt.store.cycles.list(limit=1)
        if not newest or not newest[0].state.terminal:
            return
        cycle, plan = newest[0], CyclePlan.from_dict(newest[0].plan)
        if plan.source is not PlanSource.LEARNER or plan.trial is None:
            return  # an operator's recipe is told as a trial of its own, which cannot be looked up: never twice
        try:
            study = optuna.load_study(
                study_name=policies.study_name_for(recipe_config(rt.config)), storage=self.storage(rt)
            )
        except KeyError:  # no study yet
            return
        trials = study.get_trials(deepcopy=False)
        if 0 <= plan.trial < len(trials) and trials[plan.trial].state == optuna.trial.TrialState.RUNNING:
            log.warning("cycle %s ended but the recipe learner was not told (the daemon stopped first): telling it now",
                        cycle.id)
            self.tell(rt, cycle)


def check_override(config: QthaConfig, overrides: Mapping[str, Any]) -> policies.Recipe:
    """The cold-start recipe with ``overrides`` applied: how the CLI checks ``--recipe K=V`` before queueing it.

    Raises:
        RecipeOverrideError: an unknown field, a wrong type or an invalid value (the message names the field).
    """
    return _overridden(cold_start_recipe(config), overrides)


def _overridden(recipe: policies.Recipe, overrides: Mapping[str, Any]) -> policies.Recipe:
    """``recipe`` with an operator's changes; switching the adapter kind resets the other kind's sizes."""
    if not overrides:
        return recipe
    data = recipe.to_dict()
    adapter = overrides.get("adapter", recipe.adapter)
    if adapter != recipe.adapter:
        if adapter == "lora":
            data |= {"qnn_mode": None, "qubits": 0, "layers": 0, "bond_dim": 0, "rank": 8}
        elif adapter == "qtha":
            cold = policies.PAPER_RECIPE
            data |= {"qnn_mode": "weight", "qubits": cold.qubits, "layers": cold.layers, "bond_dim": cold.bond_dim,
                     "rank": 0}
    try:
        return policies.Recipe.from_dict(data | dict(overrides))
    except policies.PolicyInputError as exc:
        raise RecipeOverrideError(f"cycle --now --recipe: {exc}") from None
