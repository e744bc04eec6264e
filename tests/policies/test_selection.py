"""Selecting at most one of several candidates with Holm's correction (numbers worked out by hand below)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import (
    Action,
    PolicyInputError,
    PromotionConfig,
    decide_promotion,
    holm_levels,
    paired_bootstrap_lcb,
    paired_bootstrap_p,
    select_candidate,
)
from tests.policies.helpers import at, evaluation

NOW = at(12)
# Ten examples, one slice, judged: small enough to compute the bootstrap by hand.
CONFIG = PromotionConfig(floor=0.0, confidence=0.95, n_resamples=2000, min_slice_examples=5)
CHAMPION = evaluation("champ", [0.5] * 10)


def wins(version: str, k: int, *, n: int = 10, smoke_ok: bool = True) -> object:
    """A candidate scoring 1.0 on the first ``k`` of ``n`` examples and 0.5 (the champion's score) elsewhere."""
    return evaluation(version, [1.0] * k + [0.5] * (n - k), smoke_ok=smoke_ok)


# A candidate with k = 3 wins of +0.5 among n = 10 examples: a resample's mean is 0.05 * Binomial(10, 0.3), so
# P(mean <= 0) = P(no win drawn) = 0.7**10 = 0.0282. That is below alpha = 0.05 (one candidate: promoted) and
# above alpha / 3 = 0.0167 (the first Holm level of three candidates: rejected). k = 8 gives 0.2**10 = 1e-7.
BORDERLINE_P = 0.7**10


def test_holm_levels_are_alpha_over_the_remaining_count() -> None:
    assert holm_levels(3, 0.05) == pytest.approx((0.05 / 3, 0.025, 0.05))
    assert holm_levels(1, 0.05) == (0.05,)
    with pytest.raises(PolicyInputError):
        holm_levels(0, 0.05)


def test_the_p_value_uses_the_bounds_resamples() -> None:
    diffs = np.array([0.5] * 3 + [0.0] * 7)
    p = paired_bootstrap_p(diffs, n_resamples=20000, seed=0)
    assert p == pytest.approx(BORDERLINE_P, abs=0.004)  # 4 standard errors of 20000 draws
    # The same resamples: the bound at confidence 1 - a is above zero exactly when fewer than a share are <= 0.
    assert paired_bootstrap_lcb(diffs, confidence=0.95, n_resamples=20000, seed=0) > 0
    assert paired_bootstrap_lcb(diffs, confidence=1 - 0.05 / 3, n_resamples=20000, seed=0) == 0
    assert paired_bootstrap_p(np.full(4, 0.1)) == 0.0 and paired_bootstrap_p(np.full(4, -0.1)) == 1.0


def test_a_candidate_passing_at_alpha_but_not_at_alpha_over_three_is_rejected_among_three() -> None:
    border = wins("border", 3)
    alone = select_candidate([border], CHAMPION, NOW, CONFIG)
    assert alone.decision.action is Action.PROMOTE and alone.winner == "border"
    # One candidate: exactly the single-candidate gate, no correction.
    single = decide_promotion(border, CHAMPION, NOW, CONFIG)
    [verdict] = alone.verdicts
    assert verdict.action is single.action and verdict.decision.evidence["lcb"] == single.evidence["lcb"] > 0
    assert alone.decision.evidence["correction"] == "none"

    worse = [evaluation("w1", [0.45] * 10), evaluation("w2", [0.5] * 10)]
    three = select_candidate([border, *worse], CHAMPION, NOW, CONFIG)
    assert three.decision.action is Action.REJECT and three.winner is None
    first = three.verdicts[0]
    assert (first.rank, first.confidence) == (0, pytest.approx(1 - 0.05 / 3))
    assert first.p_value == pytest.approx(BORDERLINE_P, abs=0.012)  # 3000 resamples: 4 standard errors
    assert first.action is Action.REJECT and ("bootstrap_lcb", "suppressed") in _codes(first)
    assert "98.33% lower bound" in _message(first, "bootstrap_lcb")
    # The step-down stopped at the borderline candidate: the others are not tested further.
    assert all(("holm_stopped", "suppressed") in _codes(v) for v in three.verdicts[1:])
    evidence = three.decision.evidence
    assert evidence["correction"] == "holm" and evidence["alpha"] == pytest.approx(0.05)
    assert evidence["n_resamples"] == 3000  # 50 resampled means beyond the 1.67% quantile
    assert [c["rank"] for c in evidence["candidates"]] == [1, 3, 2]
    assert three.decision.codes() == ("holm_correction", "failed_gate", "failed_gate", "failed_gate")


def test_of_two_significant_candidates_only_the_larger_gain_is_promoted() -> None:
    strong, stronger = wins("strong", 8), wins("stronger", 9)
    selection = select_candidate([strong, stronger], CHAMPION, NOW, CONFIG)
    assert selection.decision.action is Action.PROMOTE and selection.winner == "stronger"
    by_version = {v.version: v for v in selection.verdicts}
    assert by_version["stronger"].action is Action.PROMOTE and by_version["stronger"].chosen
    loser = by_version["strong"]
    assert loser.action is Action.REJECT and not loser.chosen
    assert ("bootstrap_lcb", "fired") in _codes(loser)  # it passed the corrected gate ...
    assert "stronger was chosen (mean gain +0.45 against mean gain +0.4)" in _message(loser, "outgained")
    assert sum(v.action is Action.PROMOTE for v in selection.verdicts) == 1


def test_a_strong_candidate_is_promoted_and_a_borderline_one_fails_its_holm_level() -> None:
    selection = select_candidate([wins("border", 3), wins("strong", 8)], CHAMPION, NOW, CONFIG)
    assert selection.winner == "strong"
    border = selection.verdicts[0]
    # Ranked second (larger p-value): tested at 1 - 0.05 / 1 = 95%, where 0.0282 passes; it loses on gain.
    assert border.rank == 1 and border.confidence == pytest.approx(0.95)
    assert ("bootstrap_lcb", "fired") in _codes(border) and border.action is Action.REJECT
    assert ("outgained", "suppressed") in _codes(border)


def test_the_best_gain_failing_another_check_leaves_the_next_best() -> None:
    broken = wins("broken", 9, smoke_ok=False)
    selection = select_candidate([broken, wins("good", 8)], CHAMPION, NOW, CONFIG)
    assert selection.winner == "good"
    assert ("smoke_test", "suppressed") in _codes(selection.verdicts[0])
    assert selection.decision.reasons[-1].code == "chosen"


def test_without_a_champion_the_best_mean_passing_the_floor_is_chosen_uncorrected() -> None:
    config = PromotionConfig(floor=0.6)
    low, high, higher = (evaluation(v, [m] * 10) for v, m in (("low", 0.5), ("high", 0.7), ("higher", 0.8)))
    selection = select_candidate([low, high, higher], None, NOW, config)
    assert selection.winner == "higher" and selection.decision.evidence["correction"] == "none"
    assert [str(v.action) for v in selection.verdicts] == ["reject", "reject", "promote"]
    assert "higher: mean 0.8, promoted" in [r.message for r in selection.decision.reasons]


def test_small_slices_hold_the_best_candidate_for_a_human() -> None:
    config = PromotionConfig(floor=0.0, min_slice_examples=50, small_slice_action="hold")
    selection = select_candidate([wins("a", 8), wins("b", 9)], CHAMPION, NOW, config)
    assert selection.decision.action is Action.HOLD and selection.winner == "b"
    assert [str(v.action) for v in selection.verdicts] == ["reject", "hold"]


@pytest.mark.parametrize("candidates", [[], [wins("same", 3), wins("same", 4)]])
def test_no_or_repeated_candidates_are_refused(candidates: list) -> None:
    with pytest.raises(PolicyInputError):
        select_candidate(candidates, CHAMPION, NOW, CONFIG)


def test_the_selection_is_deterministic_and_json_safe() -> None:
    import json

    args = ([wins("a", 3), wins("b", 8), wins("c", 5)], CHAMPION, NOW, CONFIG)
    first, again = select_candidate(*args, seed=4), select_candidate(*args, seed=4)
    assert json.dumps(first.decision.to_dict()) == json.dumps(again.decision.to_dict())
    assert [v.decision.to_dict() for v in first.verdicts] == [v.decision.to_dict() for v in again.verdicts]


def _codes(verdict: object) -> list[tuple[str, str]]:
    return [(r.code, str(r.kind)) for r in verdict.decision.reasons]  # type: ignore[attr-defined]


def _message(verdict: object, code: str) -> str:
    return next(r.message for r in verdict.decision.reasons if r.code == code)  # type: ignore[attr-defined]
