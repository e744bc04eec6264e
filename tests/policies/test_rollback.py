"""Automatic rollback during the bake period, hand-computed (previous champion 0.80, margin 0.02)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from policies import Action, MetricSample, PolicyInputError, PromotionRecord, RollbackConfig, decide_rollback
from tests.policies.helpers import at

CONFIG = RollbackConfig(bake_period=timedelta(hours=24), margin=0.02, min_samples=3)
PROMOTED = PromotionRecord("v2", "v1", at(0), 0.80)


def live(values: list[float], *, start_h: float = 1.0, version: str = "v2") -> list[MetricSample]:
    return [MetricSample(at(start_h + i), v, version) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    ("samples", "now_h", "action", "code"),
    [
        ([0.70, 0.75, 0.77], 4, Action.ROLLBACK, "live_below_previous"),  # mean 0.74 < 0.78
        ([0.78, 0.78, 0.78], 4, Action.KEEP, "live_holds"),  # mean 0.78 is not below 0.80 - 0.02
        ([0.60, 0.60], 4, Action.KEEP, "insufficient_samples"),  # 2 < 3 samples
        (
            [0.60, 0.60, 0.60],
            24,
            Action.ROLLBACK,
            "live_below_previous",
        ),  # the last instant of the bake period
        ([0.60, 0.60, 0.60], 24.01, Action.KEEP, "baked"),
        # Samples of the old champion, or from before the promotion, do not count.
        (live([0.5] * 3, version="v1") + live([0.79] * 3), 8, Action.KEEP, "live_holds"),
        (live([0.5] * 3, start_h=-4) + live([0.79] * 3), 8, Action.KEEP, "live_holds"),
        # A sample after `now` is not yet known.
        (live([0.79, 0.79]) + live([0.1], start_h=10), 8, Action.KEEP, "insufficient_samples"),
    ],
)
def test_rollback_scenarios(samples: list, now_h: float, action: Action, code: str) -> None:
    rows = samples if samples and isinstance(samples[0], MetricSample) else live(samples)
    decision = decide_rollback(PROMOTED, rows, at(now_h), CONFIG)
    assert decision.action == action
    assert decision.codes() == (code,)


def test_evidence() -> None:
    decision = decide_rollback(PROMOTED, live([0.70, 0.75, 0.77]), at(4), CONFIG)
    assert decision.evidence == {
        "version": "v2",
        "previous_version": "v1",
        "previous_metric": 0.8,
        "live_mean": pytest.approx(0.74),
        "live_samples": 3,
        "baked_s": 4 * 3600.0,
    }


def test_first_champion_has_nothing_to_roll_back_to() -> None:
    first = PromotionRecord("v1", None, at(0), None)
    decision = decide_rollback(first, live([0.0] * 5, version="v1"), at(2), CONFIG)
    assert (decision.action, decision.codes()) == (Action.KEEP, ("no_previous_champion",))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RollbackConfig(margin=-0.1),
        lambda: RollbackConfig(bake_period=timedelta(0)),
        lambda: PromotionRecord("v2", "v1", at(0), None),
        lambda: PromotionRecord("v2", "v1", at(0).replace(tzinfo=None), 0.8),
    ],
)
def test_bad_inputs_are_refused(make) -> None:
    with pytest.raises(PolicyInputError):
        make()
