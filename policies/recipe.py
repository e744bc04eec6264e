"""How to train: a recipe proposed by Optuna's TPE (ask-and-tell), learning from the cycles' outcomes.

The interface stays pure in everything but the study: the caller passes the Optuna ``storage`` (an
``optuna.storages.BaseStorage`` or a URL; the agent gives an RDB storage on its own database, tests an
``InMemoryStorage``) and ``now``; the policy reads no clock, does no other I/O and keeps no global state.

Cycle of use::

    proposal = propose_recipe(budget_left, now=now, storage=storage, config=cfg)
    ...train with proposal.recipe...
    record_recipe_outcome(proposal.trial_number, RecipeOutcome(gain=0.03, spend=spent), storage=storage, config=cfg)

Objective (maximised): ``gain - cpu_hour_weight * CPU-hours - money_weight * money - shot_weight * Mshots -
queue_hour_weight * queue-hours``, so that equal gains prefer the cheaper recipe and backend.

The first proposal of a study is the paper's configuration (QTHA, 10 qubits, 10 layers, q_proj/v_proj), clamped
to the configured search space and, by fewer steps, to the remaining budget. A proposal whose estimated cost
exceeds the remaining budget is never returned: it is told to the study as failed (TPE ignores failed trials, so
today's budget does not bias tomorrow's model) and another is asked, up to ``max_asks``; then the cheapest recipe
of the space is tried; if even that does not fit, the decision is ``skip``.

A changed search space starts a new study (its name carries a hash of the space), because Optuna refuses to
change a categorical parameter's choices within one study.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna

from .cost import CostEstimate, CostModel, Recipe
from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, jsonable, require_aware
from .records import Spend
from .space import (
    PAPER_RECIPE,
    SearchSpace,
    cheapest,
    cold_start,
    estimate_in,
    recipe_distributions,
    recipe_params,
    space_fingerprint,
    suggest_recipe,
)

__all__ = [
    "PAPER_RECIPE",
    "RecipeConfig",
    "RecipeOutcome",
    "RecipeProposal",
    "SearchSpace",
    "propose_recipe",
    "propose_recipes",
    "record_operator_recipe",
    "record_recipe_outcome",
    "withdraw_proposal",
    "recipe_score",
    "study_name_for",
]

_F, _N, _S = ReasonKind.FIRED, ReasonKind.NOTE, ReasonKind.SUPPRESSED


@dataclass(frozen=True)
class RecipeConfig:
    """The learner's configuration.

    Attributes:
        space: what may be proposed.
        cost_model: how a recipe's cost is estimated.
        cold_start: the first recipe of a study (clamped to ``space`` and the budget).
        cpu_hour_weight, money_weight, shot_weight, queue_hour_weight: objective penalty per CPU-hour, unit of
            money, million shots and hour of queue wait, in metric units.
        startup_trials: random proposals before TPE models the history.
        max_asks: proposals tried per call before falling back to the cheapest recipe.
        study_name: prefix of the Optuna study name (a hash of the space is appended).
    """

    space: SearchSpace = SearchSpace()
    cost_model: CostModel = CostModel()
    cold_start: Recipe = PAPER_RECIPE
    cpu_hour_weight: float = 0.01
    money_weight: float = 0.01
    shot_weight: float = 0.001
    queue_hour_weight: float = 0.01
    startup_trials: int = 8
    max_asks: int = 16
    study_name: str = "qtha-recipe"


@dataclass(frozen=True)
class RecipeOutcome:
    """What a cycle trained with a proposed recipe achieved.

    Attributes:
        gain: candidate minus champion on the held-out metric (``None``: the cycle failed).
        spend: what the cycle actually spent.
        queue_seconds: how long its circuits waited in queues.
    """

    gain: float | None
    spend: Spend = Spend()
    queue_seconds: float = 0.0


@dataclass(frozen=True)
class RecipeProposal:
    """The recipe policy's answer: a decision plus the recipe and the trial to report its outcome to.

    Attributes:
        decision: ``propose`` (with a recipe) or ``skip`` (nothing fits the budget), with its reasons.
        recipe: the recipe to train with (``None`` on skip).
        trial_number: the Optuna trial to pass to :func:`record_recipe_outcome` (``None`` on skip).
        estimate: the recipe's estimated cost (``None`` on skip).
    """

    decision: Decision
    recipe: Recipe | None
    trial_number: int | None
    estimate: CostEstimate | None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {
                "decision": self.decision.to_dict(),
                "recipe": self.recipe,
                "trial_number": self.trial_number,
                "estimate": self.estimate,
            }
        )


def recipe_score(outcome: RecipeOutcome, config: RecipeConfig = RecipeConfig()) -> float | None:
    """The objective the learner maximises: gain minus weighted cost (``None`` for a failed cycle)."""
    if outcome.gain is None:
        return None
    spend = outcome.spend
    return (
        outcome.gain
        - config.cpu_hour_weight * spend.cpu_seconds / 3600.0
        - config.money_weight * spend.money
        - config.shot_weight * spend.shots / 1e6
        - config.queue_hour_weight * outcome.queue_seconds / 3600.0
    )


def study_name_for(config: RecipeConfig) -> str:
    """The study name: the configured prefix plus a short hash of the search space."""
    return f"{config.study_name}-{space_fingerprint(config.space)}"


def _load_study(storage: Any, config: RecipeConfig, seed: int, *, parallel: bool = False) -> optuna.Study:
    name = study_name_for(config)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the first proposal of this search space
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    with warnings.catch_warnings():
        # multivariate/group TPE is marked experimental; its behaviour is what the tests pin.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Re-seeded by trial count: a fresh sampler seeded alike on every call would repeat its random draws.
        study.sampler = optuna.samplers.TPESampler(
            seed=seed + len(study.get_trials(deepcopy=False)),
            multivariate=True,
            group=True,
            n_startup_trials=config.startup_trials,
            # Several trials asked at once: count the running ones as poor results, so they are not repeated.
            constant_liar=parallel,
        )
    return study


def _fail(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    trial.set_user_attr("failed_because", why)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _budget_reason(estimate: CostEstimate, budget_left: Spend) -> Reason:
    spend = estimate.spend
    return Reason(
        "fits_budget",
        _F,
        f"estimated {spend.cpu_seconds:.0f} CPU-s of {budget_left.cpu_seconds:.0f} left, {spend.shots} shots of "
        f"{budget_left.shots}, money {spend.money:.4g} of {budget_left.money:.4g}, queue {estimate.queue_seconds:.0f} s",
    )


def propose_recipe(
    budget_left: Spend,
    *,
    now: datetime,
    storage: Any,
    config: RecipeConfig = RecipeConfig(),
    seed: int = 0,
) -> RecipeProposal:
    """Proposes the next cycle's recipe (an Optuna trial left running until its outcome is recorded).

    Args:
        budget_left: what today's budget still allows (see :func:`policies.remaining_budget`).
        now: the current instant (timezone-aware), stamped on the decision.
        storage: the Optuna storage (object or URL) holding the study; the caller owns it.
        config: search space, cost model, cold start and objective weights.
        seed: the root seed; proposals are a deterministic function of it and the study's history.

    Returns:
        The proposal; its estimated spend never exceeds ``budget_left``. Trials left running by an earlier
        proposal whose outcome was never recorded (a crashed cycle) are marked failed first.
    """
    return propose_recipes(budget_left, count=1, now=now, storage=storage, config=config, seed=seed)[0]


def propose_recipes(
    budget_left: Spend,
    *,
    count: int,
    now: datetime,
    storage: Any,
    config: RecipeConfig = RecipeConfig(),
    seed: int = 0,
) -> tuple[RecipeProposal, ...]:
    """Proposes up to ``count`` recipes for candidates trained at once in one cycle (one trial each).

    The first is :func:`propose_recipe`'s. Each further one is asked from the same study while the earlier trials
    still run; with more than one, TPE's constant liar counts the running trials as poor results, so the next
    proposal looks elsewhere instead of repeating them. Together the proposals' estimates fit ``budget_left``:
    a further proposal must fit what the earlier ones left, and the first that finds nothing affordable in
    ``max_asks`` asks ends the list (no cheapest-recipe fallback: a second copy of the cheapest recipe would
    spend a slot on a duplicate).

    Returns:
        One to ``count`` proposals; only the first can be a ``skip`` (then it is the only one). Every proposed
        trial awaits its outcome (:func:`record_recipe_outcome`), whether its candidate wins or not.

    Raises:
        PolicyInputError: ``count`` is below 1.
    """
    require_aware("now", now)
    if count < 1:
        raise PolicyInputError(f"propose_recipes count = {count}; ask for at least one recipe")
    study = _load_study(storage, config, seed, parallel=count > 1)
    reasons: list[Reason] = []
    trials = study.get_trials(deepcopy=False)
    abandoned = [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    for number in abandoned:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if abandoned:
        reasons.append(
            Reason("abandoned_trials", _N, f"trials {abandoned} never got an outcome: marked failed")
        )
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    evidence: dict[str, Any] = {"budget_left": budget_left, "completed_trials": len(complete)}
    if complete:
        leader = max(complete, key=lambda t: (t.value, -t.number))
        evidence |= {"best_score": leader.value, "best_trial": leader.number}
    first = _first_proposal(study, bool(trials), budget_left, now, reasons, evidence, complete, config)
    proposals = [first]
    left = budget_left
    while first.estimate is not None and len(proposals) < count:
        left = _minus(left, proposals[-1].estimate.spend)  # type: ignore[union-attr]  # PROPOSE has an estimate
        more = _another(study, left, now, len(proposals) + 1, count, complete, evidence, config)
        if more is None:
            break
        proposals.append(more)
    return tuple(proposals)


def _minus(left: Spend, used: Spend) -> Spend:
    return Spend(
        max(0.0, left.cpu_seconds - used.cpu_seconds), max(0, left.shots - used.shots), max(0.0, left.money - used.money)
    )


def _learned(complete: list[optuna.trial.FrozenTrial], evidence: dict[str, Any], config: RecipeConfig) -> Reason:
    phase = "random exploration" if len(complete) < config.startup_trials else "TPE model"
    best = (
        f"; best score so far {evidence['best_score']:.4g} (trial {evidence['best_trial']})"
        if complete
        else ""
    )
    return Reason(
        "learned", _F, f"{phase} after {len(complete)} completed cycles (startup {config.startup_trials}){best}"
    )


def _first_proposal(
    study: optuna.Study,
    had_trials: bool,
    budget_left: Spend,
    now: datetime,
    reasons: list[Reason],
    evidence: dict[str, Any],
    complete: list[optuna.trial.FrozenTrial],
    config: RecipeConfig,
) -> RecipeProposal:
    if not had_trials:
        recipe, changes = cold_start(config.space, config.cold_start, budget_left, config.cost_model)
        if recipe is not None:
            study.enqueue_trial(recipe_params(recipe))
            trial = study.ask()
            suggest_recipe(trial, config.space)
            note = "; ".join(changes) if changes else "no change needed"
            reasons.append(
                Reason(
                    "cold_start",
                    _F,
                    f"first cycle: the cold-start recipe (by default the paper's configuration) fitted to the space and budget ({note})",
                )
            )
            return _proposed(study, trial, recipe, budget_left, now, reasons, evidence, config)
        reasons.append(
            Reason(
                "cold_start_unaffordable",
                _N,
                "the cold-start recipe does not fit the budget even at the fewest steps",
            )
        )

    rejected = 0
    for _ in range(config.max_asks):
        trial = study.ask()
        recipe = suggest_recipe(trial, config.space)
        estimate = estimate_in(config.space, recipe, config.cost_model)
        if estimate.spend.fits_within(budget_left):
            if rejected:
                reasons.append(
                    Reason("over_budget_discarded", _N, f"{rejected} proposals exceeded the budget")
                )
            reasons.append(_learned(complete, evidence, config))
            return _proposed(study, trial, recipe, budget_left, now, reasons, evidence, config)
        _fail(study, trial, "over budget")
        rejected += 1
    reasons.append(Reason("over_budget_discarded", _N, f"{rejected} proposals exceeded the budget"))

    fallback = cheapest(config.space, budget_left, config.cost_model)
    if fallback is None:
        reasons.append(
            Reason("no_affordable_recipe", _S, "even the cheapest recipe of the space exceeds the budget")
        )
        return RecipeProposal(
            Decision("recipe", Action.SKIP, now, tuple(reasons), evidence), None, None, None
        )
    study.enqueue_trial(recipe_params(fallback[0]))
    trial = study.ask()
    suggest_recipe(trial, config.space)
    reasons.append(
        Reason("fallback_cheapest", _F, "the cheapest recipe of the space (smallest sizes, fewest steps)")
    )
    return _proposed(study, trial, fallback[0], budget_left, now, reasons, evidence, config)


def _another(
    study: optuna.Study,
    left: Spend,
    now: datetime,
    slot: int,
    count: int,
    complete: list[optuna.trial.FrozenTrial],
    history: dict[str, Any],
    config: RecipeConfig,
) -> RecipeProposal | None:
    """The ``slot``-th proposal of one cycle, fitting what the earlier ones ``left``; ``None`` when none does."""
    evidence: dict[str, Any] = {
        "budget_left": left,
        "completed_trials": len(complete),
        **{k: history[k] for k in ("best_score", "best_trial") if k in history},
        "slot": slot,
    }
    for rejected in range(config.max_asks):
        trial = study.ask()
        recipe = suggest_recipe(trial, config.space)
        estimate = estimate_in(config.space, recipe, config.cost_model)
        if estimate.spend.fits_within(left):
            reasons = [
                Reason(
                    "parallel_candidate",
                    _N,
                    f"candidate {slot} of up to {count} trained at once, asked while the earlier ones' trials run"
                    + (f"; {rejected} proposals exceeded what they left of the budget" if rejected else ""),
                ),
                _learned(complete, evidence, config),
            ]
            return _proposed(study, trial, recipe, left, now, reasons, evidence, config)
        _fail(study, trial, "over budget")
    return None


def _proposed(
    study: optuna.Study,
    trial: optuna.Trial,
    recipe: Recipe,
    budget_left: Spend,
    now: datetime,
    reasons: list[Reason],
    evidence: dict[str, Any],
    config: RecipeConfig,
) -> RecipeProposal:
    estimate = estimate_in(config.space, recipe, config.cost_model)
    if not estimate.spend.fits_within(budget_left):  # guard: every path above checked it already
        raise AssertionError(f"recipe {recipe} estimated {estimate} exceeds {budget_left}")
    backend = config.space.backend(recipe.backend)
    reasons.append(_budget_reason(estimate, budget_left))
    what = "LoRA" if recipe.adapter == "lora" else f"QTHA {recipe.qnn_mode} mode"
    reasons.append(Reason("backend", _N, f"{what} on {backend.name} ({backend.kind})"))
    trial.set_user_attr("recipe", jsonable(recipe.to_dict()))
    trial.set_user_attr("estimate", jsonable(estimate.to_dict()))
    evidence |= {"recipe": recipe, "estimate": estimate, "trial_number": trial.number}
    decision = Decision("recipe", Action.PROPOSE, now, tuple(reasons), evidence)
    return RecipeProposal(decision, recipe, trial.number, estimate)


def record_recipe_outcome(
    trial_number: int,
    outcome: RecipeOutcome,
    *,
    storage: Any,
    config: RecipeConfig = RecipeConfig(),
) -> float | None:
    """Tells the study how a proposed recipe did; returns the score told (``None``: told as failed).

    Raises:
        PolicyInputError: the trial does not exist or already has an outcome.
    """
    study = optuna.load_study(study_name=study_name_for(config), storage=storage)
    _awaiting(study, trial_number)
    score = recipe_score(outcome, config)
    if score is None:
        study.tell(trial_number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial_number, score)
    return score


def _awaiting(study: optuna.Study, trial_number: int) -> None:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials) or trials[trial_number].state != optuna.trial.TrialState.RUNNING:
        raise PolicyInputError(f"trial {trial_number} of {study.study_name!r} is not awaiting an outcome")


def withdraw_proposal(trial_number: int, *, storage: Any, config: RecipeConfig = RecipeConfig()) -> None:
    """Withdraws a proposal that never ran (e.g. an operator's recipe took its place): told as failed, which
    TPE ignores, so the learner's model sees only recipes that really ran.

    Raises:
        PolicyInputError: the trial does not exist or already has an outcome.
    """
    study = optuna.load_study(study_name=study_name_for(config), storage=storage)
    _awaiting(study, trial_number)
    study.tell(trial_number, state=optuna.trial.TrialState.FAIL)


def record_operator_recipe(
    recipe: Recipe, outcome: RecipeOutcome, *, storage: Any, config: RecipeConfig = RecipeConfig()
) -> int | None:
    """Tells the study how a recipe chosen outside it (an operator's) did, as a trial of its own.

    Returns:
        The new trial's number, or ``None`` when the recipe lies outside the search space (TPE cannot model it,
        so the study is not told; the caller records that).
    """
    space = config.space
    if (recipe.kind not in space.adapters or recipe.backend not in [b.name for b in space.backends]
            or recipe.method not in space.methods):
        return None
    dists = recipe_distributions(space, recipe.kind, recipe.method)
    params = recipe_params(recipe)
    score = recipe_score(outcome, config)
    try:  # create_trial validates every parameter against its distribution
        trial = optuna.trial.create_trial(
            params=params,
            distributions={k: dists[k] for k in params},
            value=score,
            state=optuna.trial.TrialState.FAIL if score is None else optuna.trial.TrialState.COMPLETE,
            user_attrs={"source": "operator", "recipe": jsonable(recipe.to_dict())},
        )
    except ValueError:  # a value outside the space
        return None
    study = optuna.create_study(
        storage=storage, study_name=study_name_for(config), direction="maximize", load_if_exists=True
    )
    study.add_trial(trial)
    return len(study.get_trials(deepcopy=False)) - 1
