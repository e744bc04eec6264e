"""Promotion: floors, gain, the paired bootstrap bound (borderline cases computed by hand), slices, first champion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from policies import Action, PolicyInputError, PromotionConfig, decide_promotion, paired_bootstrap_lcb
from tests.policies.helpers import at, evaluation

NOW = at(12)
CONFIG = PromotionConfig(floor=0.3, min_gain=0.0, confidence=0.95, n_resamples=2000, min_slice_examples=20)


def codes(decision) -> list[tuple[str, str]]:
    return [(r.code, str(r.kind)) for r in decision.reasons]


def pair(n: int, wins: int) -> tuple:
    """A champion scoring 0.5 everywhere and a candidate scoring 1.0 on the first ``wins`` examples."""
    champion = evaluation("champ", [0.5] * n)
    candidate = evaluation("cand", [1.0] * wins + [0.5] * (n - wins))
    return candidate, champion


# Paired bootstrap lower bounds, borderline cases:
# - constant differences d: every resample mean is d, so the bound is exactly d;
# - n = 100 with k wins of +0.5: a resample's mean is 0.5 * Binomial(100, k/100) / 100.
#   k = 1: P(no win drawn) = 0.99**100 = 0.366 > 0.05, so the 5% quantile is 0 -> not above zero.
#   k = 4: P(0) = 0.96**100 = 0.0169 < 0.05 <= P(<= 1) = 0.0872 -> the quantile is one win: 0.005.
#   k = 4 at 99%: P(0) = 0.0169 > 0.01 -> the 1% quantile is 0.
#   k = 5: P(<= 1) = 0.0371 < 0.05 <= P(<= 2) = 0.1183 -> two wins: 0.01.
@pytest.mark.parametrize(
    ("diffs", "confidence", "resamples", "expected"),
    [
        (np.full(30, 0.1), 0.95, 2000, 0.1),
        (np.zeros(30), 0.95, 2000, 0.0),
        (np.array([0.5] + [0.0] * 99), 0.95, 2000, 0.0),
        (np.array([0.5] * 4 + [0.0] * 96), 0.95, 10000, 0.005),
        (np.array([0.5] * 4 + [0.0] * 96), 0.99, 10000, 0.0),
        (np.array([0.5] * 5 + [0.0] * 95), 0.95, 10000, 0.01),
    ],
)
def test_bootstrap_borderline(diffs: np.ndarray, confidence: float, resamples: int, expected: float) -> None:
    lcb = paired_bootstrap_lcb(diffs, confidence=confidence, n_resamples=resamples, seed=0)
    assert lcb == pytest.approx(expected, abs=1e-12)


def test_bootstrap_agrees_with_scipy() -> None:
    diffs = np.random.default_rng(7).normal(0.05, 0.3, size=200)
    ours = paired_bootstrap_lcb(diffs, confidence=0.95, n_resamples=5000, seed=1)
    ref = stats.bootstrap(
        (diffs,),
        np.mean,
        confidence_level=0.95,
        alternative="greater",
        method="percentile",
        n_resamples=5000,
        random_state=np.random.default_rng(1),
    ).confidence_interval.low
    assert ours == pytest.approx(ref, abs=0.005)


def test_bootstrap_is_seeded() -> None:
    diffs = np.random.default_rng(3).normal(0.0, 1.0, size=50)
    assert paired_bootstrap_lcb(diffs, seed=5) == paired_bootstrap_lcb(diffs, seed=5)
    assert paired_bootstrap_lcb(diffs, seed=5) != paired_bootstrap_lcb(diffs, seed=6)


@pytest.mark.parametrize(
    ("wins", "action", "lcb_kind"),
    [(1, Action.REJECT, "suppressed"), (5, Action.PROMOTE, "fired"), (0, Action.REJECT, "suppressed")],
)
def test_gain_must_be_significant(wins: int, action: Action, lcb_kind: str) -> None:
    candidate, champion = pair(100, wins)
    decision = decide_promotion(candidate, champion, NOW, CONFIG, seed=0)
    assert decision.action == action
    assert ("bootstrap_lcb", lcb_kind) in codes(decision)
    assert decision.evidence["mean_gain"] == pytest.approx(0.005 * wins)
    assert decision.evidence["paired_examples"] == 100


def test_promote_lists_every_check() -> None:
    candidate, champion = pair(40, 40)
    decision = decide_promotion(candidate, champion, NOW, CONFIG)
    assert decision.action == Action.PROMOTE
    assert codes(decision) == [
        ("smoke_test", "fired"),
        ("floor", "fired"),
        ("min_gain", "fired"),
        ("bootstrap_lcb", "fired"),
        ("slices", "fired"),
    ]
    assert decision.evidence["lcb"] == 0.5


def test_min_gain_rejects_a_small_but_certain_gain() -> None:
    candidate, champion = pair(40, 40)  # gain 0.5 on every example
    decision = decide_promotion(
        candidate, champion, NOW, PromotionConfig(min_gain=0.6, min_slice_examples=20)
    )
    assert decision.action == Action.REJECT
    assert ("min_gain", "suppressed") in codes(decision) and ("bootstrap_lcb", "fired") in codes(decision)


def test_too_small_slice_holds_for_a_human() -> None:
    # 40 examples in "maths" (all +0.5) and 3 in "poetry" (all -0.5): poetry is too small to judge.
    slices = ["maths"] * 40 + ["poetry"] * 3
    champion = evaluation("champ", [0.5] * 43, slices=slices)
    candidate = evaluation("cand", [1.0] * 40 + [0.0] * 3, slices=slices)
    decision = decide_promotion(candidate, champion, NOW, CONFIG)
    assert decision.action == Action.HOLD
    assert ("slice_too_small", "note") in codes(decision)
    assert codes(decision)[-1] == ("hold_for_human", "suppressed")
    assert decision.evidence["slices"]["poetry"] == {"n": 3, "mean_difference": -0.5}
    reported = decide_promotion(
        candidate, champion, NOW, PromotionConfig(floor=0.3, small_slice_action="report")
    )
    assert reported.action == Action.PROMOTE
    assert ("slice_too_small", "note") in codes(reported)  # reported, never silently passed


def test_slice_regression_rejects_despite_overall_gain() -> None:
    slices = ["maths"] * 60 + ["poetry"] * 20
    champion = evaluation("champ", [0.5] * 80, slices=slices)
    candidate = evaluation("cand", [1.0] * 60 + [0.4] * 20, slices=slices)  # +0.5 on maths, -0.1 on poetry
    decision = decide_promotion(candidate, champion, NOW, CONFIG)
    assert decision.action == Action.REJECT
    assert ("slice_regression", "suppressed") in codes(decision)
    tolerant = decide_promotion(
        candidate, champion, NOW, PromotionConfig(slice_tolerance=0.1, min_slice_examples=20)
    )
    assert tolerant.action == Action.PROMOTE


def test_smoke_floor_and_size_all_reported() -> None:
    candidate, champion = pair(40, 40)
    broken = evaluation("cand", [0.2] * 40, smoke_ok=False, params=2000)
    decision = decide_promotion(broken, champion, NOW, PromotionConfig(floor=0.3, max_params=1000))
    assert decision.action == Action.REJECT
    assert codes(decision)[:3] == [
        ("smoke_test", "suppressed"),
        ("param_budget", "suppressed"),
        ("floor", "suppressed"),
    ]


@pytest.mark.parametrize(
    ("candidate", "action", "expected"),
    [
        (
            evaluation("v1", [0.4] * 10),
            Action.PROMOTE,
            [("smoke_test", "fired"), ("floor", "fired"), ("no_champion", "note")],
        ),
        (
            evaluation("v1", [0.2] * 10),
            Action.REJECT,
            [("smoke_test", "fired"), ("floor", "suppressed"), ("no_champion", "note")],
        ),
        (
            evaluation("v1", [0.9] * 10, smoke_ok=False),
            Action.REJECT,
            [("smoke_test", "suppressed"), ("floor", "fired"), ("no_champion", "note")],
        ),
    ],
)
def test_first_candidate_needs_floor_and_smoke_only(candidate, action: Action, expected: list) -> None:
    decision = decide_promotion(candidate, None, NOW, CONFIG)
    assert decision.action == action
    assert codes(decision) == expected


def test_only_paired_examples_count() -> None:
    champion = evaluation("champ", [0.5] * 50)
    extra = evaluation("cand", [1.0] * 60)  # ids ex0050..ex0059 have no champion score
    decision = decide_promotion(extra, champion, NOW, CONFIG)
    assert decision.evidence["paired_examples"] == 50 and decision.evidence["unpaired_examples"] == 10
    assert ("unpaired_examples", "note") in codes(decision)
    disjoint = type(champion)(
        "champ", tuple(type(s)("other" + s.example_id, s.score) for s in champion.scores)
    )
    assert decide_promotion(extra, disjoint, NOW, CONFIG).action == Action.REJECT


@pytest.mark.parametrize(
    "kwargs", [{"min_gain": -0.1}, {"confidence": 1.0}, {"n_resamples": 10}, {"small_slice_action": "pass"}]
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(PolicyInputError):
        PromotionConfig(**kwargs)


def test_duplicate_example_ids_are_refused() -> None:
    with pytest.raises(PolicyInputError, match="ex0000"):
        type(evaluation("x", [1.0]))("x", evaluation("x", [1.0]).scores * 2)
