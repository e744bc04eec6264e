"""The recipe search space, the paper's cold start and how recipes are built, priced and fitted to a budget.

Shared by :mod:`policies.recipe` (the learner); no Optuna study is touched here except through a trial's
``suggest_*`` calls.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import optuna

from .cost import MAX_WORKED_EXAMPLES, BackendOption, CostEstimate, CostModel, Recipe, estimate_cost
from .decision import PolicyInputError, jsonable
from .records import Spend

__all__ = [
    "PAPER_RECIPE",
    "SearchSpace",
    "cheapest",
    "cold_start",
    "estimate_in",
    "make_recipe",
    "recipe_params",
    "space_fingerprint",
    "recipe_distributions",
    "suggest_recipe",
]

_KINDS = ("qtha-weight", "qtha-activation", "lora")
_METHODS = ("supervised", "self-improve")
# The self-improvement fields the learner draws for a self-improve recipe (SearchSpace's ranges of the same names).
_SELF_IMPROVE = ("samples_k", "temperature", "agreement", "replay_share", "worked_examples")

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
        methods: how a cycle gets its training data, among ``"supervised"`` and ``"self-improve"`` (the learner
            chooses between them only when both are listed; a one-method space is the space it always was).
        samples_k, temperature, agreement, replay_share, worked_examples: the self-improvement recipe's ranges,
            drawn only for a self-improve recipe (and part of the space only when ``methods`` lists it).
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
    methods: tuple[str, ...] = ("supervised",)
    samples_k: tuple[int, int] = (4, 16)
    temperature: tuple[float, float] = (0.5, 1.0)
    agreement: tuple[float, float] = (0.5, 0.8)
    replay_share: tuple[float, float] = (0.0, 0.5)
    worked_examples: tuple[int, int] = (0, MAX_WORKED_EXAMPLES)

    def __post_init__(self) -> None:
        if not self.methods or any(m not in _METHODS for m in self.methods):
            raise PolicyInputError(f"SearchSpace.methods = {self.methods!r}; choose among {_METHODS}")
        if "self-improve" in self.methods:
            self._check_self_improve()
        if not self.adapters or any(a not in _KINDS for a in self.adapters):
            raise PolicyInputError(f"SearchSpace.adapters = {self.adapters!r}; choose among {_KINDS}")
        for name in ("qubits", "layers", "bond_dims", "ranks", "steps", "learning_rate"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise PolicyInputError(f"SearchSpace.{name} = {(lo, hi)!r} must satisfy 0 < low <= high")
        if "qtha-weight" in self.adapters and self.qubits[0] == self.qubits[1] and self.qubits[0] % 2:
            raise PolicyInputError(
                f"SearchSpace.qubits = {self.qubits!r} holds no even count, which weight mode needs; widen it"
            )
        names = [b.name for b in self.backends]
        if not names or len(set(names)) != len(names):
            raise PolicyInputError(f"SearchSpace.backends {names!r} must be a non-empty list of unique names")
        if "lora" in self.adapters and not any(b.kind == "simulator" for b in self.backends):
            raise PolicyInputError(
                f"SearchSpace.backends {names!r} need a simulator when 'lora' is an adapter"
            )

    def _check_self_improve(self) -> None:
        # Each range's ends must make a valid recipe: a Recipe at both ends refuses what is out of range.
        for name in _SELF_IMPROVE:
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise PolicyInputError(f"SearchSpace.{name} = {(lo, hi)!r} must satisfy low <= high")
        for end in (0, 1):
            try:
                replace(PAPER_RECIPE, method="self-improve", **{n: getattr(self, n)[end] for n in _SELF_IMPROVE})
            except PolicyInputError as exc:
                raise PolicyInputError(f"SearchSpace self-improvement range: {exc}") from exc

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


def space_fingerprint(space: SearchSpace) -> str:
    """A short stable hash of the space (a changed space gets a new study)."""
    fields = {
        "adapters": space.adapters,
        "qubits": space.qubits,
        "layers": space.layers,
        "bond_dims": space.bond_dims,
        "ranks": space.ranks,
        "learning_rate": space.learning_rate,
        "steps": space.steps,
        "backends": [b.name for b in space.backends],
    } | ({"methods": space.methods} if space.methods != ("supervised",) else {})
    if "self-improve" in space.methods:
        fields |= {name: getattr(space, name) for name in _SELF_IMPROVE}
    text = json.dumps(jsonable(fields), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _clamp(value: float, bounds: tuple[Any, Any]) -> Any:
    return min(max(value, bounds[0]), bounds[1])


def recipe_params(recipe: Recipe) -> dict[str, Any]:
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
    if recipe.method != "supervised":
        params["method"] = recipe.method
        params |= {name: getattr(recipe, name) for name in _SELF_IMPROVE}
    return params


def recipe_distributions(
    space: SearchSpace, kind: str, method: str = "supervised"
) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distributions of a recipe of adapter ``kind`` and ``method`` (``kind`` itself first): what
    :func:`suggest_recipe` draws from, and what a recipe chosen elsewhere must fit to be told to the study."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "kind": optuna.distributions.CategoricalDistribution(list(space.adapters)),
        "learning_rate": optuna.distributions.FloatDistribution(*space.learning_rate, log=True),
        "steps": optuna.distributions.IntDistribution(*space.steps, log=True),
    }
    if len(space.methods) > 1 or method != "supervised":
        dists["method"] = optuna.distributions.CategoricalDistribution(list(space.methods))
    if method == "self-improve":
        # Drawn only for a self-improve recipe: a supervised trial has no such parameters (Optuna's
        # define-by-run space is conditional, as it is for qubits against rank).
        dists |= {
            "samples_k": optuna.distributions.IntDistribution(*space.samples_k),
            "temperature": optuna.distributions.FloatDistribution(*space.temperature),
            "agreement": optuna.distributions.FloatDistribution(*space.agreement),
            "replay_share": optuna.distributions.FloatDistribution(*space.replay_share),
            "worked_examples": optuna.distributions.IntDistribution(*space.worked_examples),
        }
    if kind == "lora":
        return dists | {"rank": optuna.distributions.IntDistribution(*space.ranks)}
    low, high = space.qubits
    # Weight mode reshapes 2^n probabilities into a square core: it only gets even qubit counts.
    qubits = (
        optuna.distributions.IntDistribution(low + low % 2, high - high % 2, step=2)
        if kind == "qtha-weight"
        else optuna.distributions.IntDistribution(low, high)
    )
    return dists | {
        "qubits": qubits,
        "layers": optuna.distributions.IntDistribution(*space.layers),
        "bond_dim": optuna.distributions.IntDistribution(*space.bond_dims),
        "backend": optuna.distributions.CategoricalDistribution([b.name for b in space.backends]),
    }


def _suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def suggest_recipe(trial: optuna.Trial, space: SearchSpace) -> Recipe:
    kind = _suggest(trial, "kind", recipe_distributions(space, "lora")["kind"])
    method = space.methods[0]
    if len(space.methods) > 1:
        method = _suggest(trial, "method", recipe_distributions(space, kind)["method"])
    # "method" comes again here when the space has it (the same draw), so what the trial holds is what
    # recipe_params gives for the recipe, one method or two.
    values = {
        name: _suggest(trial, name, dist)
        for name, dist in recipe_distributions(space, kind, method).items()
        if name != "kind"
    }
    return make_recipe(space, kind, **({"method": method} | values))


def make_recipe(
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
    method: str = "supervised",
    **self_improve: Any,
) -> Recipe:
    """A recipe of adapter ``kind``; LoRA always runs on the space's first simulator. ``self_improve`` holds a
    self-improve recipe's sampling fields (``samples_k``, ``temperature``, ...); unnamed ones keep their defaults."""
    unknown = sorted(set(self_improve) - set(_SELF_IMPROVE))
    if unknown:
        raise PolicyInputError(f"make_recipe got unknown field(s) {unknown}; self-improvement takes {_SELF_IMPROVE}")
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
        method=method,  # type: ignore[arg-type]
        **self_improve,
    )


def estimate_in(space: SearchSpace, recipe: Recipe, cost_model: CostModel) -> CostEstimate:
    """The recipe's estimated cost on the backend of ``space`` it names."""
    return estimate_cost(recipe, space.backend(recipe.backend), cost_model)


def _max_steps(space: SearchSpace, recipe: Recipe, budget_left: Spend, cost_model: CostModel) -> int:
    """The most steps of ``recipe`` that fit ``budget_left`` (cost is linear in steps)."""
    per_step = estimate_in(space, replace(recipe, steps=1), cost_model).spend
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


def _clamp_qubits(value: int, bounds: tuple[int, int], *, even: bool) -> int:
    clamped = _clamp(value, bounds)
    if even and clamped % 2:
        clamped = clamped - 1 if clamped - 1 >= bounds[0] else clamped + 1
    return clamped


def _self_improve_fields(space: SearchSpace, recipe: Recipe) -> dict[str, Any]:
    """The space's first method, and for self-improvement ``recipe``'s sampling fields clamped to the space."""
    method = space.methods[0]
    if method != "self-improve":
        return {"method": method}
    return {"method": method} | {name: _clamp(getattr(recipe, name), getattr(space, name)) for name in _SELF_IMPROVE}


def cold_start(
    space: SearchSpace, paper: Recipe, budget_left: Spend, cost_model: CostModel
) -> tuple[Recipe | None, list[str]]:
    """The configured cold-start recipe clamped to the space and the budget, and what was changed."""
    kind = (
        paper.kind
        if paper.kind in space.adapters
        else next((a for a in space.adapters if a != "lora"), "lora")
    )
    backend = paper.backend if paper.backend in [b.name for b in space.backends] else space.simulator.name
    recipe = make_recipe(
        space,
        kind,
        qubits=_clamp_qubits(paper.qubits, space.qubits, even=kind == "qtha-weight"),
        layers=_clamp(paper.layers, space.layers),
        bond_dim=_clamp(paper.bond_dim, space.bond_dims),
        rank=_clamp(paper.rank or 8, space.ranks),  # LoRA r=8 is the baseline protocol's rank
        learning_rate=_clamp(paper.learning_rate, space.learning_rate),
        steps=_clamp(paper.steps, space.steps),
        backend=backend,
        **_self_improve_fields(space, paper),
    )
    changes = [
        f"{name} {getattr(paper, name)!r} -> {getattr(recipe, name)!r}"
        for name in ("qnn_mode", "qubits", "layers", "bond_dim", "learning_rate", "steps", "backend")
        if getattr(paper, name) != getattr(recipe, name)
        and (kind != "lora" or name in ("learning_rate", "steps"))
    ]
    affordable = min(recipe.steps, _max_steps(space, recipe, budget_left, cost_model))
    if affordable < space.steps[0]:
        return None, changes
    if affordable < recipe.steps:
        changes.append(f"steps {recipe.steps} -> {affordable} to fit the remaining budget")
        recipe = replace(recipe, steps=affordable)
    return recipe, changes


def cheapest(
    space: SearchSpace, budget_left: Spend, cost_model: CostModel
) -> tuple[Recipe, CostEstimate] | None:
    """The cheapest recipe of the space that fits the budget (smallest sizes, fewest steps), if any."""
    lr = math.sqrt(space.learning_rate[0] * space.learning_rate[1])
    candidates = [
        make_recipe(
            space,
            kind,
            qubits=space.qubits[0],
            layers=space.layers[0],
            bond_dim=space.bond_dims[0],
            rank=space.ranks[0],
            learning_rate=lr,
            steps=space.steps[0],
            backend=backend.name,
            # the fewest samples and the shortest prompts a self-improve recipe of the space may have
            **_self_improve_fields(space, replace(PAPER_RECIPE, samples_k=space.samples_k[0],
                                                  worked_examples=space.worked_examples[0])),
        )
        for kind in space.adapters
        for backend in (space.backends if kind != "lora" else space.backends[:1])
    ]
    priced = [(r, estimate_in(space, r, cost_model)) for r in candidates]
    fitting = [(r, e) for r, e in priced if e.spend.fits_within(budget_left)]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (p[1].spend.money, p[1].spend.shots, p[1].spend.cpu_seconds))
