"""Drift onset, hand-computed for both detectors (delta 0.005, threshold 0.05)."""

from __future__ import annotations

import pytest

from policies import DriftConfig, PolicyInputError, detect_drift
from tests.policies.helpers import samples

PH = DriftConfig(method="page_hinkley", delta=0.005, threshold=0.05, min_samples=5)
CUSUM = DriftConfig(method="cusum", delta=0.005, threshold=0.05, min_samples=6, reference_samples=5)


@pytest.mark.parametrize(
    ("values", "config", "alarm", "onset", "statistic"),
    [
        # Page-Hinkley: five 0.8 samples push m to 0.025 (peak at index 4). A 0.6 at index 5: running mean 0.76667,
        # m = 0.025 - 0.16667 + 0.005 = -0.13667, statistic 0.16167 > 0.05 -> alarm at once; onset index 5.
        ([0.8] * 5 + [0.6], PH, 5, 5, 0.161666666667),
        # A small drop to 0.77: m5 = 0.005 (stat 0.02), m6 = -0.0114286 (0.0364286), m7 = -0.0251786 (0.0501786 > 0.05).
        ([0.8] * 5 + [0.77] * 3, PH, 7, 5, 0.0501785714286),
        ([0.8] * 5 + [0.77] * 2, PH, None, None, 0.0364285714286),
        # Improvement is not drift.
        ([0.7] * 5 + [0.9] * 5, PH, None, None, 0.0),
        # CUSUM, baseline 0.8: S = 0.005, 0.02, 0.045, 0.08 > 0.05 at index 8; S was last 0 at index 4 -> onset 5.
        ([0.8] * 5 + [0.79, 0.78, 0.77, 0.76], CUSUM, 8, 5, 0.08),
        # S = 0.015, then 0.015 - 0.02 - 0.005 < 0 -> 0 at index 6, then 0.015, 0.03, 0.045: no alarm yet ...
        ([0.8] * 5 + [0.78, 0.82, 0.78, 0.78, 0.78], CUSUM, None, None, 0.045),
        # ... one more 0.78: 0.06 > 0.05 at index 10, onset after the reset at 6 -> 7.
        ([0.8] * 5 + [0.78, 0.82, 0.78, 0.78, 0.78, 0.78], CUSUM, 10, 7, 0.06),
    ],
)
def test_drift_onset(
    values: list[float], config: DriftConfig, alarm: int | None, onset: int | None, statistic: float
) -> None:
    result = detect_drift(samples(values), config)
    assert result.drifted is (alarm is not None)
    assert result.alarm_index == alarm
    assert result.onset_index == onset
    assert result.statistic == pytest.approx(statistic, abs=1e-9)
    assert result.samples == len(values)


def test_too_few_samples_never_alarm() -> None:
    result = detect_drift(samples([0.9, 0.1, 0.1, 0.1]), PH)
    assert (result.drifted, result.enough_samples, result.samples) == (False, False, 4)


def test_samples_are_sorted_by_time() -> None:
    ordered = samples([0.8] * 5 + [0.6])
    assert detect_drift(tuple(reversed(ordered)), PH) == detect_drift(ordered, PH)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "ewma"},
        {"threshold": 0.0},
        {"delta": -0.1},
        {"method": "cusum", "min_samples": 5, "reference_samples": 5},
    ],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(PolicyInputError):
        DriftConfig(**kwargs)
