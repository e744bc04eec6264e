"""The self-improvement fields of a recipe: validated, carried through to_dict/from_dict, priced (sampling CPU
counts), and chosen by the learner only when its space lists the method."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from policies import PAPER_RECIPE, BackendOption, CostModel, PolicyInputError, Recipe, estimate_cost
from policies.space import SearchSpace, recipe_distributions, recipe_params, suggest_recipe

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
