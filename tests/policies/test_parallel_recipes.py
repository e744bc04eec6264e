"""Several recipes for one cycle: N running trials, within the budget together, each told its own outcome."""

from __future__ import annotations

import optuna
import pytest

from policies import (
    PAPER_RECIPE,
    Action,
    PolicyInputError,
    RecipeConfig,
    RecipeOutcome,
    Spend,
    propose_recipe,
    propose_recipes,
    record_recipe_outcome,
    study_name_for,
)
from tests.policies.helpers import at

NOW = at(12)
PLENTY = Spend(cpu_seconds=1e6, shots=10**9, money=1e6)


def _trials(storage: object, config: RecipeConfig | None = None) -> list[optuna.trial.FrozenTrial]:
    config = config or RecipeConfig()
    return optuna.load_study(study_name=study_name_for(config), storage=storage).get_trials(deepcopy=False)


def test_three_proposals_are_three_running_trials_the_first_the_cold_start() -> None:
    storage = optuna.storages.InMemoryStorage()
    proposals = propose_recipes(PLENTY, count=3, now=NOW, storage=storage)
    assert [p.trial_number for p in proposals] == [0, 1, 2]
    assert proposals[0].recipe == PAPER_RECIPE and proposals[0].decision.codes()[0] == "cold_start"
    assert all(p.decision.action is Action.PROPOSE for p in proposals)
    assert proposals[1].decision.codes()[0] == "parallel_candidate"
    assert len({p.recipe for p in proposals}) == 3  # three different recipes, not one trained three times
    assert [t.state for t in _trials(storage)] == [optuna.trial.TrialState.RUNNING] * 3
    # Every trial is told its own outcome, the losers' and a failed one's as well.
    for proposal, gain in zip(proposals, (0.1, -0.02, None), strict=True):
        record_recipe_outcome(proposal.trial_number, RecipeOutcome(gain=gain), storage=storage)
    assert [t.state.name for t in _trials(storage)] == ["COMPLETE", "COMPLETE", "FAIL"]
    # The next cycle's proposals find no abandoned trial.
    following = propose_recipes(PLENTY, count=2, now=NOW, storage=storage)
    assert "abandoned_trials" not in following[0].decision.codes()


def test_one_recipe_is_the_single_proposal_unchanged() -> None:
    a, b = optuna.storages.InMemoryStorage(), optuna.storages.InMemoryStorage()
    for storage in (a, b):
        record_recipe_outcome(propose_recipe(PLENTY, now=NOW, storage=storage).trial_number,
                              RecipeOutcome(gain=0.05), storage=storage)
    [single] = propose_recipes(PLENTY, count=1, now=NOW, storage=a)
    assert single.recipe == propose_recipe(PLENTY, now=NOW, storage=b).recipe


def test_the_proposals_fit_the_budget_together_and_stop_when_it_is_spent() -> None:
    storage = optuna.storages.InMemoryStorage()
    config = RecipeConfig(max_asks=4)
    first = propose_recipe(PLENTY, now=NOW, storage=storage, config=config)  # let TPE have a history
    record_recipe_outcome(first.trial_number, RecipeOutcome(gain=0.0), storage=storage, config=config)
    budget = Spend(cpu_seconds=100.0)  # room for two or three of the small recipes, not for eight
    proposals = propose_recipes(budget, count=8, now=NOW, storage=storage, config=config, seed=1)
    spent = sum(p.estimate.spend.cpu_seconds for p in proposals)
    assert 2 <= len(proposals) < 8 and spent <= budget.cpu_seconds
    later = proposals[1:]
    assert all(p.decision.evidence["budget_left"]["cpu_seconds"] < budget.cpu_seconds for p in later)
    running = [t for t in _trials(storage, config) if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.number for t in running] == [p.trial_number for p in proposals]  # the over-budget asks failed


def test_a_skip_is_the_only_answer_and_count_must_be_positive() -> None:
    storage = optuna.storages.InMemoryStorage()
    [skip] = propose_recipes(Spend(cpu_seconds=1.0), count=3, now=NOW, storage=storage, config=RecipeConfig(max_asks=2))
    assert skip.decision.action is Action.SKIP and skip.trial_number is None
    with pytest.raises(PolicyInputError, match="at least one"):
        propose_recipes(PLENTY, count=0, now=NOW, storage=storage)
