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

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import optuna

from .cost import BackendOption, CostEstimate, CostModel, Recipe, estimate_cost
from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, jsonable, require_aware
from .records import Spend

__all__ = [
    "PAPER_RECIPE",
    "RecipeConfig",
    "RecipeOutcome",
    "RecipeProposal",
    "SearchSpace",
    "propose_recipe",
    "record_recipe_outcome",
    "recipe_score",
    "study_name_for",
]

_F, _N, _S = ReasonKind.FIRED, ReasonKind.NOTE, ReasonKind.SUPPRESSED
_KINDS = ("qtha-weight", "qtha-activation", "lora")

# The paper's configuration (arXiv 2503.12790): QTHA on q_proj/v_proj, 10 qubits, 10 layers. Bond dimension,
# learning rate and steps are ours (the paper does not state them here); the daemon's config overrides them.
PAPER_RECIPE = Recipe(
    adapter="qtha",
    qnn_mode="activation",
    qubits=10,
    layers=10,
    bond_dim=4,
    rank=0,
    learning_rate=1e-3,
    steps=60,
    backend="jax",
)


@dataclass(frozen=True)
class SearchSpace:
    """The recipes the learner may propose (inclusive integer and float ranges).

    Attributes:
        adapters: choices among ``"qtha-weight"``, ``"qtha-activation"``, ``"lora"``.
        qubits, layers, bond_dims: QTHA ranges.
        ranks: LoRA range.
        learning_rate: log-uniform range.
        steps: log-uniform integer range.
        backends: where QTHA circuits may run; LoRA runs on the first simulator among them.
        targets: module-name patterns that receive adapters.
    """

    adapters: tuple[str, ...] = _KINDS
    qubits: tuple[int, int] = (2, 10)
    layers: tuple[int, int] = (1, 10)
    bond_dims: tuple[int, int] = (1, 8)
    ranks: tuple[int, int] = (2, 16)
    learning_rate: tuple[float, float] = (1e-4, 1e-2)
    steps: tuple[int, int] = (10, 200)
    backends: tuple[BackendOption, ...] = (BackendOption(name="jax"),)
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if not self.adapters or any(a not in _KINDS for a in self.adapters):
            raise PolicyInputError(f"SearchSpace.adapters = {self.adapters!r}; choose among {_KINDS}")
        for name in ("qubits", "layers", "bond_dims", "ranks", "steps", "learning_rate"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise PolicyInputError(f"SearchSpace.{name} = {(lo, hi)!r} must satisfy 0 < low <= high")
        names = [b.name for b in self.backends]
        if not names or len(set(names)) != len(names):
            raise PolicyInputError(f"SearchSpace.backends {names!r} must be a non-empty list of unique names")
        if "lora" in self.adapters and not any(b.kind == "simulator" for b in self.backends):
            raise PolicyInputError(
                f"SearchSpace.backends {names!r} need a simulator when 'lora' is an adapter"
            )

    @property
    def simulator(self) -> BackendOption:
        """The first simulator (where LoRA runs), else the first backend."""
        return next((b for b in self.backends if b.kind == "simulator"), self.backends[0])

    def backend(self, name: str) -> BackendOption:
        for option in self.backends:
            if option.name == name:
                return option
        raise PolicyInputError(
            f"backend {name!r} is not in the search space {[b.name for b in self.backends]}"
        )


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
    text = json.dumps(jsonable(_space_dict(config.space)), sort_keys=True)
    return f"{config.study_name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _space_dict(space: SearchSpace) -> dict[str, Any]:
    return {
        "adapters": space.adapters,
        "qubits": space.qubits,
        "layers": space.layers,
        "bond_dims": space.bond_dims,
        "ranks": space.ranks,
        "learning_rate": space.learning_rate,
        "steps": space.steps,
        "backends": [b.name for b in space.backends],
    }


def _load_study(storage: Any, config: RecipeConfig, seed: int) -> optuna.Study:
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
        )
    return study


def _clamp(value: float, bounds: tuple[Any, Any]) -> Any:
    return min(max(value, bounds[0]), bounds[1])


def _params(recipe: Recipe) -> dict[str, Any]:
    """The Optuna parameters that reproduce ``recipe`` (conditional on the adapter kind)."""
    params: dict[str, Any] = {
        "kind": recipe.kind,
        "learning_rate": recipe.learning_rate,
        "steps": recipe.steps,
    }
    if recipe.adapter == "qtha":
        params |= {"qubits": recipe.qubits, "layers": recipe.layers, "bond_dim": recipe.bond_dim}
        params["backend"] = recipe.backend
    else:
        params["rank"] = recipe.rank
    return params


def _suggest(trial: optuna.Trial, space: SearchSpace) -> Recipe:
    kind = trial.suggest_categorical("kind", list(space.adapters))
    lr = trial.suggest_float("learning_rate", *space.learning_rate, log=True)
    steps = trial.suggest_int("steps", *space.steps, log=True)
    if kind == "lora":
        rank = trial.suggest_int("rank", *space.ranks)
        return _make(space, kind, rank=rank, learning_rate=lr, steps=steps)
    return _make(
        space,
        kind,
        qubits=trial.suggest_int("qubits", *space.qubits),
        layers=trial.suggest_int("layers", *space.layers),
        bond_dim=trial.suggest_int("bond_dim", *space.bond_dims),
        learning_rate=lr,
        steps=steps,
        backend=trial.suggest_categorical("backend", [b.name for b in space.backends]),
    )


def _make(
    space: SearchSpace,
    kind: str,
    *,
    learning_rate: float,
    steps: int,
    qubits: int = 0,
    layers: int = 0,
    bond_dim: int = 0,
    rank: int = 0,
    backend: str | None = None,
) -> Recipe:
    """A recipe of adapter ``kind``; LoRA always runs on the space's first simulator."""
    lora = kind == "lora"
    return Recipe(
        adapter="lora" if lora else "qtha",
        qnn_mode=None if lora else kind.removeprefix("qtha-"),  # type: ignore[arg-type]
        qubits=0 if lora else qubits,
        layers=0 if lora else layers,
        bond_dim=0 if lora else bond_dim,
        rank=rank if lora else 0,
        learning_rate=learning_rate,
        steps=steps,
        backend=space.simulator.name if lora or backend is None else backend,
        targets=space.targets,
    )


def _estimate(recipe: Recipe, config: RecipeConfig) -> CostEstimate:
    return estimate_cost(recipe, config.space.backend(recipe.backend), config.cost_model)


def _max_steps(recipe: Recipe, budget_left: Spend, config: RecipeConfig) -> int:
    """The most steps of ``recipe`` that fit ``budget_left`` (cost is linear in steps)."""
    per_step = _estimate(replace(recipe, steps=1), config).spend
    limits = [
        left / used
        for left, used in (
            (budget_left.cpu_seconds, per_step.cpu_seconds),
            (budget_left.shots, per_step.shots),
            (budget_left.money, per_step.money),
        )
        if used > 0
    ]
    return math.floor(min(limits)) if limits else recipe.steps


def _cold_start(budget_left: Spend, config: RecipeConfig) -> tuple[Recipe | None, list[str]]:
    """The configured cold-start recipe clamped to the space and the budget, and what was changed."""
    space, paper = config.space, config.cold_start
    kind = (
        paper.kind
        if paper.kind in space.adapters
        else next((a for a in space.adapters if a != "lora"), "lora")
    )
    backend = paper.backend if paper.backend in [b.name for b in space.backends] else space.simulator.name
    recipe = _make(
        space,
        kind,
        qubits=_clamp(paper.qubits, space.qubits),
        layers=_clamp(paper.layers, space.layers),
        bond_dim=_clamp(paper.bond_dim, space.bond_dims),
        rank=_clamp(paper.rank or 8, space.ranks),  # LoRA r=8 is the baseline protocol's rank
        learning_rate=_clamp(paper.learning_rate, space.learning_rate),
        steps=_clamp(paper.steps, space.steps),
        backend=backend,
    )
    changes = [
        f"{name} {getattr(paper, name)!r} -> {getattr(recipe, name)!r}"
        for name in ("qnn_mode", "qubits", "layers", "bond_dim", "learning_rate", "steps", "backend")
        if getattr(paper, name) != getattr(recipe, name)
        and (kind != "lora" or name in ("learning_rate", "steps"))
    ]
    affordable = min(recipe.steps, _max_steps(recipe, budget_left, config))
    if affordable < space.steps[0]:
        return None, changes
    if affordable < recipe.steps:
        changes.append(f"steps {recipe.steps} -> {affordable} to fit the remaining budget")
        recipe = replace(recipe, steps=affordable)
    return recipe, changes


def _cheapest(budget_left: Spend, config: RecipeConfig) -> tuple[Recipe, CostEstimate] | None:
    """The cheapest recipe of the space that fits the budget (smallest sizes, fewest steps), if any."""
    space = config.space
    lr = math.sqrt(space.learning_rate[0] * space.learning_rate[1])
    smallest = {
        "qubits": space.qubits[0],
        "layers": space.layers[0],
        "bond_dim": space.bond_dims[0],
        "rank": space.ranks[0],
        "learning_rate": lr,
        "steps": space.steps[0],
    }
    candidates = [
        _make(space, kind, backend=backend.name, **smallest)
        for kind in space.adapters
        for backend in (space.backends if kind != "lora" else space.backends[:1])
    ]
    priced = [(r, _estimate(r, config)) for r in candidates]
    fitting = [(r, e) for r, e in priced if e.spend.fits_within(budget_left)]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (p[1].spend.money, p[1].spend.shots, p[1].spend.cpu_seconds))


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
    require_aware("now", now)
    study = _load_study(storage, config, seed)
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
        best = max(complete, key=lambda t: (t.value, -t.number))
        evidence |= {"best_score": best.value, "best_trial": best.number}

    if not trials:
        recipe, changes = _cold_start(budget_left, config)
        if recipe is not None:
            study.enqueue_trial(_params(recipe))
            trial = study.ask()
            _suggest(trial, config.space)
            note = "; ".join(changes) if changes else "no change needed"
            reasons.append(
                Reason("cold_start", _F, f"first cycle: the paper's configuration clamped ({note})")
            )
            return _proposed(study, trial, recipe, budget_left, now, reasons, evidence, config)
        reasons.append(
            Reason("cold_start_unaffordable", _N, "the paper's configuration does not fit the budget")
        )

    rejected = 0
    for _ in range(config.max_asks):
        trial = study.ask()
        recipe = _suggest(trial, config.space)
        estimate = _estimate(recipe, config)
        if estimate.spend.fits_within(budget_left):
            if rejected:
                reasons.append(
                    Reason("over_budget_discarded", _N, f"{rejected} proposals exceeded the budget")
                )
            phase = "random exploration" if len(complete) < config.startup_trials else "TPE model"
            best = (
                f"; best score so far {evidence['best_score']:.4g} (trial {evidence['best_trial']})"
                if complete
                else ""
            )
            reasons.append(
                Reason(
                    "learned",
                    _F,
                    f"{phase} after {len(complete)} completed cycles (startup {config.startup_trials}){best}",
                )
            )
            return _proposed(study, trial, recipe, budget_left, now, reasons, evidence, config)
        _fail(study, trial, "over budget")
        rejected += 1
    reasons.append(Reason("over_budget_discarded", _N, f"{rejected} proposals exceeded the budget"))

    cheapest = _cheapest(budget_left, config)
    if cheapest is None:
        reasons.append(
            Reason("no_affordable_recipe", _S, "even the cheapest recipe of the space exceeds the budget")
        )
        return RecipeProposal(
            Decision("recipe", Action.SKIP, now, tuple(reasons), evidence), None, None, None
        )
    study.enqueue_trial(_params(cheapest[0]))
    trial = study.ask()
    _suggest(trial, config.space)
    reasons.append(
        Reason("fallback_cheapest", _F, "the cheapest recipe of the space (smallest sizes, fewest steps)")
    )
    return _proposed(study, trial, cheapest[0], budget_left, now, reasons, evidence, config)


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
    estimate = _estimate(recipe, config)
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
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials) or trials[trial_number].state != optuna.trial.TrialState.RUNNING:
        raise PolicyInputError(f"trial {trial_number} of {study.study_name!r} is not awaiting an outcome")
    score = recipe_score(outcome, config)
    if score is None:
        study.tell(trial_number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial_number, score)
    return score
