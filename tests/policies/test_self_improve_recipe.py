"""The self-improvement fields of a recipe: validated, carried through to_dict/from_dict, priced (sampling CPU
counts), and chosen by the learner only when its space lists the method."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from policies import (
    PAPER_RECIPE,
    BackendOption,
    CostModel,
    PolicyInputError,
    Recipe,
    RecipeConfig,
    RecipeOutcome,
    Spend,
    estimate_cost,
    propose_recipe,
    record_operator_recipe,
    study_name_for,
)
from policies.space import SearchSpace, recipe_distributions, recipe_params, space_fingerprint, suggest_recipe
from tests.policies.helpers import at

SI_FIELDS = ("samples_k", "temperature", "agreement", "replay_share", "worked_examples")

SELF = dataclasses.replace(PAPER_RECIPE, method="self-improve", samples_k=4, temperature=0.7, agreement=0.5,
                           replay_share=0.3, from_base=True, pool_prompts=10, worked_examples=2)


def test_round_trip_and_supervised_dict_unchanged():
    assert Recipe.from_dict(SELF.to_dict()) == SELF
    assert "method" not in PAPER_RECIPE.to_dict()  # stored supervised recipes read and write as before
    assert Recipe.from_dict(PAPER_RECIPE.to_dict() | {"method": "self-improve"}).samples_k == 8
    assert "worked_examples" not in dataclasses.replace(SELF, worked_examples=0).to_dict()  # older rows read alike


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("method", "rl", "method"), ("samples_k", 0, "samples_k"), ("samples_k", 17, "samples_k"),
    ("temperature", -0.1, "temperature"), ("top_p", 0.0, "top_p"), ("agreement", 1.5, "agreement"),
    ("agreement", math.nan, "agreement"), ("replay_share", 1.0, "replay_share"), ("pool_prompts", 0, "pool_prompts"),
    ("worked_examples", -1, "worked_examples"), ("worked_examples", 4, "worked_examples"),
])
def test_invalid_fields_are_refused_by_name(field, value, needle):
    with pytest.raises(PolicyInputError, match=needle):
        dataclasses.replace(SELF, **{field: value})


@pytest.mark.parametrize(("field", "value"), [("from_base", 1), ("from_base", "yes"), ("samples_k", 2.5),
                                              ("temperature", True), ("worked_examples", 1.5)])
def test_wrong_types_from_json_are_refused(field, value):
    with pytest.raises(PolicyInputError, match=field):
        Recipe.from_dict(SELF.to_dict() | {field: value})


def test_sampling_cpu_is_charged():
    model = CostModel(sample_cpu_s_per_token=0.02, sample_tokens=50)
    jax = BackendOption("jax")
    supervised = estimate_cost(dataclasses.replace(SELF, method="supervised"), jax, model).spend.cpu_seconds
    sampled = estimate_cost(SELF, jax, model).spend.cpu_seconds
    assert sampled - supervised == pytest.approx(10 * 4 * 50 * 0.02)


def test_learner_chooses_the_method_only_when_the_space_lists_it():
    assert "method" not in recipe_distributions(SearchSpace(), "lora")
    space = SearchSpace(methods=("supervised", "self-improve"))
    assert "method" in recipe_distributions(space, "lora")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    methods = {suggest_recipe(study.ask(), space).method for _ in range(20)}
    assert methods == {"supervised", "self-improve"}
    assert recipe_params(SELF)["method"] == "self-improve"
    with pytest.raises(PolicyInputError, match="methods"):
        SearchSpace(methods=("magic",))


def test_learner_draws_the_sampling_recipe_for_self_improve_trials_only():
    space = SearchSpace(methods=("supervised", "self-improve"), samples_k=(2, 12), worked_examples=(0, 3))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = []
    for _ in range(40):
        trial = study.ask()
        recipe = suggest_recipe(trial, space)
        if recipe.method == "supervised":
            assert not set(SI_FIELDS) & set(trial.params)  # no parameter that would do nothing
            assert recipe.samples_k == 8 and recipe.worked_examples == 0  # the defaults, never used
        else:
            assert {name: trial.params[name] for name in SI_FIELDS} == {name: getattr(recipe, name)
                                                                        for name in SI_FIELDS}
            assert recipe_params(recipe) == trial.params  # what the learner is told reproduces the trial
            drawn.append(recipe)
    assert 10 < len(drawn) < 30
    assert {r.worked_examples for r in drawn} == {0, 1, 2, 3}
    assert min(r.samples_k for r in drawn) >= 2 and max(r.samples_k for r in drawn) <= 12
    assert len({r.samples_k for r in drawn}) > 4 and len({round(r.temperature, 3) for r in drawn}) == len(drawn)
    assert all(0.5 <= r.temperature <= 1.0 and 0.0 <= r.replay_share <= 0.5 for r in drawn)


def test_the_learner_is_charged_what_each_sampling_recipe_costs():
    model = CostModel(sample_cpu_s_per_token=0.02, sample_tokens=50)
    few, many = (dataclasses.replace(SELF, samples_k=k) for k in (2, 12))
    jax = BackendOption("jax")
    assert (estimate_cost(many, jax, model).spend.cpu_seconds - estimate_cost(few, jax, model).spend.cpu_seconds
            == pytest.approx(10 * (12 - 2) * 50 * 0.02))


def test_an_operators_self_improve_recipe_is_told_with_its_sampling_fields():
    both = RecipeConfig(space=SearchSpace(methods=("supervised", "self-improve")))
    storage = optuna.storages.InMemoryStorage()
    chosen = dataclasses.replace(SELF, samples_k=6, temperature=0.7, agreement=0.6, replay_share=0.3)
    number = record_operator_recipe(chosen, RecipeOutcome(gain=0.05), storage=storage, config=both)
    trial = optuna.load_study(study_name=study_name_for(both), storage=storage).get_trials()[number]
    assert {name: trial.params[name] for name in SI_FIELDS} == {
        "samples_k": 6, "temperature": 0.7, "agreement": 0.6, "replay_share": 0.3, "worked_examples": 2}
    # A learner that only knows supervised recipes is not told (and does not fail).
    assert record_operator_recipe(chosen, RecipeOutcome(gain=0.05), storage=optuna.storages.InMemoryStorage(),
                                  config=RecipeConfig()) is None


def test_a_self_improve_only_space_cold_starts_on_self_improvement():
    only = RecipeConfig(space=SearchSpace(methods=("self-improve",), temperature=(0.9, 1.0)))
    proposal = propose_recipe(Spend(cpu_seconds=1e6), now=at(12), storage=optuna.storages.InMemoryStorage(),
                              config=only)
    assert proposal.recipe is not None and proposal.recipe.method == "self-improve"
    assert proposal.recipe.temperature == 0.9  # the default 0.8 clamped into the space
    trial = optuna.create_study().ask()
    recipe = suggest_recipe(trial, only.space)
    assert recipe.method == "self-improve" and recipe_params(recipe) == trial.params


@pytest.mark.parametrize(("field", "bounds"), [("samples_k", (0, 4)), ("samples_k", (8, 4)), ("samples_k", (4, 17)),
                                               ("worked_examples", (0, 4)), ("agreement", (0.5, 1.5)),
                                               ("replay_share", (0.0, 1.0))])
def test_self_improve_ranges_that_no_recipe_could_have_are_refused(field, bounds):
    with pytest.raises(PolicyInputError, match=field):
        SearchSpace(methods=("self-improve",), **{field: bounds})
    SearchSpace(**{field: bounds})  # irrelevant (and unchecked) while the space has no self-improvement


def test_the_sampling_ranges_are_part_of_the_space_only_with_self_improvement():
    assert space_fingerprint(SearchSpace()) == space_fingerprint(SearchSpace(samples_k=(2, 4)))
    both = SearchSpace(methods=("supervised", "self-improve"))
    assert space_fingerprint(both) != space_fingerprint(dataclasses.replace(both, samples_k=(2, 4)))
