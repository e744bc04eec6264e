"""The recipe learner: cold start, budget, persistence, determinism, and learning on synthetic objectives."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter
from dataclasses import replace

import optuna
import pytest

from policies import (
    PAPER_RECIPE,
    Action,
    BackendOption,
    CostModel,
    PolicyInputError,
    Recipe,
    RecipeConfig,
    RecipeOutcome,
    SearchSpace,
    Spend,
    estimate_cost,
    propose_recipe,
    recipe_score,
    record_operator_recipe,
    record_recipe_outcome,
    study_name_for,
    withdraw_proposal,
)
from tests.policies.helpers import at

NOW = at(12)
PLENTY = Spend(cpu_seconds=1e6, shots=10**9, money=1e6)


def learn(config: RecipeConfig, gain, *, cycles: int, seed: int, storage=None) -> list[tuple[Recipe, float]]:
    """Runs ``cycles`` propose -> train (the synthetic ``gain``) -> record rounds; returns recipes and scores."""
    storage = storage or optuna.storages.InMemoryStorage()
    history = []
    for _ in range(cycles):
        proposal = propose_recipe(PLENTY, now=NOW, storage=storage, config=config, seed=seed)
        assert proposal.recipe is not None and proposal.estimate is not None
        outcome = RecipeOutcome(
            gain(proposal.recipe), proposal.estimate.spend, proposal.estimate.queue_seconds
        )
        score = record_recipe_outcome(proposal.trial_number, outcome, storage=storage, config=config)
        history.append((proposal.recipe, score))
    return history


# --- cold start ---------------------------------------------------------------------------------------------


def test_cold_start_is_the_paper_configuration_when_it_fits() -> None:
    proposal = propose_recipe(PLENTY, now=NOW, storage=optuna.storages.InMemoryStorage())
    assert proposal.recipe == PAPER_RECIPE
    assert proposal.recipe.targets == ("q_proj", "v_proj")
    assert (proposal.recipe.adapter, proposal.recipe.qubits, proposal.recipe.layers) == ("qtha", 10, 10)
    assert proposal.decision.codes() == ("cold_start", "fits_budget", "backend")
    assert proposal.trial_number == 0


def test_cold_start_is_clamped_to_the_space_and_the_budget() -> None:
    space = SearchSpace(qubits=(2, 6), layers=(1, 4), steps=(10, 200))
    config = RecipeConfig(space=space)
    # Hand-computed per step: base 1.4 * 1.1 = 1.54 CPU-s, plus 60 modules * 512 tokens circuit evaluations of
    # 8e-5 s * 2**(6 - 10) * 4 / 10 = 2e-6 s each: 0.06144 s -> 1.60144 s/step; 90 CPU-s buy 56 steps.
    proposal = propose_recipe(
        Spend(cpu_seconds=90.0), now=NOW, storage=optuna.storages.InMemoryStorage(), config=config
    )
    assert proposal.recipe == replace(PAPER_RECIPE, qubits=6, layers=4, steps=56)
    assert proposal.estimate.spend.cpu_seconds == pytest.approx(56 * 1.60144)
    message = proposal.decision.reasons[0].message
    assert "qubits 10 -> 6" in message and "layers 10 -> 4" in message and "steps 60 -> 56" in message


def test_cold_start_uses_weight_mode_when_activation_is_not_allowed() -> None:
    config = RecipeConfig(space=SearchSpace(adapters=("qtha-weight", "lora")))
    proposal = propose_recipe(PLENTY, now=NOW, storage=optuna.storages.InMemoryStorage(), config=config)
    assert proposal.recipe == replace(PAPER_RECIPE, qnn_mode="weight", bond_dim=4)


# --- budget ---------------------------------------------------------------------------------------------------


def test_nothing_fits_gives_skip_and_no_trial() -> None:
    storage = optuna.storages.InMemoryStorage()
    proposal = propose_recipe(
        Spend(cpu_seconds=5.0), now=NOW, storage=storage, config=RecipeConfig(max_asks=3)
    )
    assert proposal.decision.action == Action.SKIP
    assert (proposal.recipe, proposal.trial_number, proposal.estimate) == (None, None, None)
    assert proposal.decision.codes() == (
        "cold_start_unaffordable",
        "over_budget_discarded",
        "no_affordable_recipe",
    )
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.FAIL}  # never left running


def test_falls_back_to_the_cheapest_recipe() -> None:
    # 20 CPU-s: the paper's 10-qubit activation mode costs ~4 CPU-s a step (40 for 10), so neither the cold start nor the
    # one sampled proposal (max_asks=1) fits; the cheapest recipe, LoRA rank 2 for 10 steps (14 CPU-s), does.
    space = SearchSpace(
        adapters=("qtha-activation", "lora"), qubits=(10, 10), layers=(10, 10), steps=(10, 200)
    )
    config = RecipeConfig(space=space, max_asks=1)
    storage = optuna.storages.InMemoryStorage()
    proposal = propose_recipe(Spend(cpu_seconds=20.0), now=NOW, storage=storage, config=config, seed=0)
    assert proposal.decision.action == Action.PROPOSE
    assert proposal.decision.codes() == (
        "cold_start_unaffordable",
        "over_budget_discarded",
        "fallback_cheapest",
        "fits_budget",
        "backend",
    )
    assert (proposal.recipe.adapter, proposal.recipe.rank, proposal.recipe.steps) == ("lora", 2, 10)
    assert proposal.estimate.spend.cpu_seconds == pytest.approx(14.0)
    assert proposal.trial_number == 1  # trial 0 was the discarded proposal


# --- persistence, determinism, bookkeeping --------------------------------------------------------------------


def test_identical_inputs_give_identical_proposals() -> None:
    config = RecipeConfig(space=SearchSpace(steps=(10, 40)))

    def gain(recipe: Recipe) -> float:
        return 0.01 * recipe.steps

    runs = [learn(config, gain, cycles=12, seed=11) for _ in range(2)]
    assert runs[0] == runs[1]
    assert learn(config, gain, cycles=12, seed=12) != runs[0]


def test_study_persists_in_the_callers_database() -> None:
    folder = tempfile.mkdtemp(prefix="qtha-recipe-")
    try:
        url = f"sqlite:///{folder}/study.db"
        config = RecipeConfig(space=SearchSpace(steps=(10, 40)))
        learn(config, lambda r: 0.05, cycles=3, seed=0, storage=optuna.storages.RDBStorage(url))
        # A new process (a new storage object on the same database) continues the same study.
        proposal = propose_recipe(PLENTY, now=NOW, storage=optuna.storages.RDBStorage(url), config=config)
        assert proposal.trial_number == 3
        assert proposal.decision.evidence["completed_trials"] == 3
        assert "learned" in proposal.decision.codes()
    finally:
        shutil.rmtree(folder)


def test_abandoned_trial_is_failed_and_reported() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = propose_recipe(PLENTY, now=NOW, storage=storage)
    second = propose_recipe(PLENTY, now=NOW, storage=storage)  # the first cycle never reported back
    assert second.decision.codes()[0] == "abandoned_trials"
    with pytest.raises(PolicyInputError, match="not awaiting an outcome"):
        record_recipe_outcome(first.trial_number, RecipeOutcome(0.1), storage=storage)
    assert record_recipe_outcome(second.trial_number, RecipeOutcome(None), storage=storage) is None


def test_score_is_gain_minus_weighted_cost() -> None:
    config = RecipeConfig(cpu_hour_weight=0.01, money_weight=0.1, shot_weight=0.001, queue_hour_weight=0.02)
    outcome = RecipeOutcome(0.05, Spend(cpu_seconds=7200.0, shots=2_000_000, money=0.3), queue_seconds=1800.0)
    # 0.05 - 0.01 * 2 h - 0.1 * 0.3 - 0.001 * 2 Mshots - 0.02 * 0.5 h
    assert recipe_score(outcome, config) == pytest.approx(0.05 - 0.02 - 0.03 - 0.002 - 0.01)
    assert recipe_score(RecipeOutcome(None), config) is None


def test_a_changed_space_starts_a_new_study() -> None:
    storage = optuna.storages.InMemoryStorage()
    propose_recipe(PLENTY, now=NOW, storage=storage, config=RecipeConfig(space=SearchSpace(steps=(10, 40))))
    propose_recipe(PLENTY, now=NOW, storage=storage, config=RecipeConfig(space=SearchSpace(steps=(10, 50))))
    assert len(optuna.get_all_study_names(storage)) == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: SearchSpace(adapters=("dora",)),
        lambda: SearchSpace(qubits=(0, 4)),
        lambda: SearchSpace(steps=(50, 10)),
        lambda: SearchSpace(backends=(BackendOption("qpu", kind="sampler"),)),  # LoRA needs a simulator
        lambda: SearchSpace(backends=(BackendOption("jax"), BackendOption("jax"))),
        lambda: Recipe("qtha", None, 4, 2, 2, 0, 1e-3, 10, "jax"),
        lambda: Recipe("lora", None, 0, 0, 0, 0, 1e-3, 10, "jax"),
    ],
)
def test_bad_spaces_and_recipes_are_refused(make) -> None:
    with pytest.raises(PolicyInputError):
        make()


# --- learning -------------------------------------------------------------------------------------------------

LEARN_SPACE = SearchSpace(
    adapters=("qtha-weight", "lora"),
    qubits=(2, 8),
    layers=(1, 6),
    bond_dims=(1, 4),
    ranks=(2, 16),
    learning_rate=(1e-4, 1e-2),
    steps=(10, 100),
)
# CPU is priced high enough that more steps stop paying: the optimum trades gain against cost.
LEARN_CONFIG = RecipeConfig(space=LEARN_SPACE, cpu_hour_weight=0.5)


def synthetic_gain(recipe: Recipe) -> float:
    """Peaks at QTHA, learning rate 10**-2.5, 6 qubits, 4 layers, bond 3; saturates in steps; LoRA tops at 0.07."""
    lr = math.exp(-((math.log10(recipe.learning_rate) + 2.5) ** 2))
    steps = 1.0 - math.exp(-recipe.steps / 15)
    if recipe.adapter == "lora":
        return 0.07 * lr * steps * (1 - 0.01 * abs(recipe.rank - 8))
    size = (
        (1 - 0.02 * abs(recipe.qubits - 6))
        * (1 - 0.02 * abs(recipe.layers - 4))
        * (1 - 0.01 * abs(recipe.bond_dim - 3))
    )
    return 0.1 * lr * steps * size


def synthetic_score(recipe: Recipe) -> float:
    estimate = estimate_cost(recipe, LEARN_SPACE.backend(recipe.backend), LEARN_CONFIG.cost_model)
    return recipe_score(RecipeOutcome(synthetic_gain(recipe), estimate.spend), LEARN_CONFIG)


def known_optimum() -> float:
    # The learning-rate factor peaks at exactly 10**-2.5; the integers are searched exhaustively.
    return max(
        synthetic_score(Recipe("qtha", "weight", q, layers, b, 0, 10**-2.5, s, "jax"))
        for q in range(2, 9, 2)  # weight mode takes even qubit counts only
        for layers in range(1, 7)
        for b in range(1, 5)
        for s in range(10, 101)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learner_gets_within_ten_percent_of_the_optimum_in_40_cycles(seed: int) -> None:
    optimum = known_optimum()
    assert optimum == pytest.approx(0.08575, abs=1e-5)  # q 6, l 4, b 3, ~45 steps
    # Measured on seeds 0-5 once weight mode drew even qubit counts only: 0.90-0.99 of the optimum after 40
    # cycles, 0.87-0.98 after 30 (TPE's draws moved with the new distribution).
    history = learn(LEARN_CONFIG, synthetic_gain, cycles=40, seed=seed)
    best = max(score for _, score in history)
    assert best >= 0.9 * optimum
    # It learned rather than got lucky once: the last ten proposals beat the first ten on average.
    scores = [score for _, score in history]
    assert sum(scores[-10:]) > sum(scores[:10])


def test_learner_prefers_the_cheaper_backend_when_gains_are_equal() -> None:
    cheap = BackendOption("cheap-qpu", kind="sampler", shots=100, money_per_shot=1e-6)
    dear = BackendOption("dear-qpu", kind="sampler", shots=100, money_per_shot=1e-5)
    space = SearchSpace(
        adapters=("qtha-weight",), qubits=(2, 3), layers=(1, 2), steps=(10, 20), backends=(dear, cheap)
    )
    config = RecipeConfig(
        space=space,
        cost_model=CostModel(modules=2),
        money_weight=1.0,
        cold_start=replace(PAPER_RECIPE, qnn_mode="weight", backend="dear-qpu"),
    )
    history = learn(config, lambda recipe: 0.1, cycles=30, seed=0)
    assert history[0][0].backend == "dear-qpu"  # the cold start was told to use the dear one
    # TPE keeps exploring (about a quarter of its proposals), but it mostly exploits the cheaper backend ...
    used = Counter(recipe.backend for recipe, _ in history[8:])
    assert used["cheap-qpu"] > 2 * used["dear-qpu"]
    # ... and its best recipe, the one it exploits around, runs there.
    best = max(history, key=lambda item: item[1])[0]
    assert best.backend == "cheap-qpu"


# --- recipes the learner did not propose ------------------------------------------------------------------------


def test_an_operators_recipe_becomes_a_trial_of_its_own_and_the_displaced_proposal_is_withdrawn() -> None:
    storage = optuna.storages.InMemoryStorage()
    proposal = propose_recipe(PLENTY, now=NOW, storage=storage, config=LEARN_CONFIG)
    withdraw_proposal(proposal.trial_number, storage=storage, config=LEARN_CONFIG)
    chosen = Recipe("qtha", "weight", 4, 2, 2, 0, 1e-3, 20, "jax")
    number = record_operator_recipe(chosen, RecipeOutcome(gain=0.05), storage=storage, config=LEARN_CONFIG)
    study = optuna.load_study(study_name=study_name_for(LEARN_CONFIG), storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert number == 1 and trials[1].user_attrs["source"] == "operator"
    assert trials[1].params == {
        "kind": "qtha-weight",
        "learning_rate": 1e-3,
        "steps": 20,
        "qubits": 4,
        "layers": 2,
        "bond_dim": 2,
        "backend": "jax",
    }
    assert trials[1].value == pytest.approx(0.05)
    with pytest.raises(PolicyInputError, match="not awaiting an outcome"):
        record_recipe_outcome(
            proposal.trial_number, RecipeOutcome(gain=1.0), storage=storage, config=LEARN_CONFIG
        )


def test_an_operators_recipe_outside_the_space_is_not_told() -> None:
    storage = optuna.storages.InMemoryStorage()
    wide = Recipe("qtha", "weight", 20, 2, 2, 0, 1e-3, 20, "jax")  # LEARN_SPACE allows 2-8 qubits
    assert (
        record_operator_recipe(wide, RecipeOutcome(gain=0.05), storage=storage, config=LEARN_CONFIG) is None
    )
    assert optuna.get_all_study_names(storage) == []  # nothing created, nothing told


def test_recipe_round_trips_and_refuses_bad_fields_by_name() -> None:
    recipe = Recipe("qtha", "weight", 4, 2, 2, 0, 1e-3, 20, "jax", batch_size=2, seq_len=64, seed=7)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    for bad, field in [
        ({"qubits": 3}, "qubits"),
        ({"steps": 2.5}, "steps"),
        ({"rank": True}, "rank"),
        ({"learn": True}, "learn"),
        ({"targets": "q_proj"}, "targets"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(PolicyInputError, match=field):
            Recipe.from_dict(recipe.to_dict() | bad)
