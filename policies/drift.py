"""Drift detection on the champion's recorded evaluation samples (higher is better; a drop is drift).

Two classic sequential detectors for a *decrease* in the mean:

- Page-Hinkley: ``m_t = sum_{i<=t} (x_i - mean(x_1..x_i) + delta)``, ``M_t = max_{i<=t} m_i``; alarm at the
  first ``t`` with ``M_t - m_t > threshold``. Needs no baseline.
- CUSUM: baseline ``mu0`` = mean of the first ``reference_samples``; ``S_t = max(0, S_{t-1} + mu0 - x_t -
  delta)`` after them; alarm at the first ``t`` with ``S_t > threshold``.

``delta`` is the drop tolerated as noise, ``threshold`` the accumulated evidence that raises the alarm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .decision import PolicyInputError
from .records import MetricSample

__all__ = ["DriftConfig", "DriftResult", "detect_drift"]


@dataclass(frozen=True)
class DriftConfig:
    """How to detect a degraded champion.

    Attributes:
        method: ``"page_hinkley"`` or ``"cusum"``.
        delta: tolerated drop per sample (metric units).
        threshold: accumulated drop that raises the alarm (Page-Hinkley lambda, CUSUM h).
        min_samples: fewer samples than this never alarm (reported as a note).
        reference_samples: CUSUM only: how many first samples define the baseline mean.
    """

    method: Literal["page_hinkley", "cusum"] = "page_hinkley"
    delta: float = 0.005
    threshold: float = 0.05
    min_samples: int = 5
    reference_samples: int = 5

    def __post_init__(self) -> None:
        if self.method not in ("page_hinkley", "cusum"):
            raise PolicyInputError(f"DriftConfig.method = {self.method!r}; use 'page_hinkley' or 'cusum'")
        if self.delta < 0 or self.threshold <= 0:
            raise PolicyInputError(
                f"DriftConfig delta = {self.delta!r} must be >= 0 and threshold = {self.threshold!r} > 0"
            )
        if self.method == "cusum" and self.min_samples <= self.reference_samples:
            raise PolicyInputError(
                f"DriftConfig.min_samples = {self.min_samples} must exceed reference_samples = "
                f"{self.reference_samples} for CUSUM (samples after the baseline are what it tests)"
            )


@dataclass(frozen=True)
class DriftResult:
    """The detector's verdict.

    Attributes:
        drifted: whether the alarm was raised at any sample.
        enough_samples: whether there were at least ``min_samples`` samples.
        statistic: the statistic at the alarm (or at the last sample when none).
        alarm_index: index of the first sample at which the alarm was raised (``None`` when none).
        onset_index: the estimated first degraded sample (``None`` when no alarm).
        samples: how many samples were examined.
    """

    drifted: bool
    enough_samples: bool
    statistic: float
    alarm_index: int | None
    onset_index: int | None
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "enough_samples": self.enough_samples,
            "statistic": self.statistic,
            "alarm_index": self.alarm_index,
            "onset_index": self.onset_index,
            "samples": self.samples,
        }


def _page_hinkley(values: Sequence[float], config: DriftConfig) -> DriftResult:
    cumulative, peak, peak_index, running_sum, statistic = 0.0, 0.0, -1, 0.0, 0.0
    for t, x in enumerate(values):
        running_sum += x
        cumulative += x - running_sum / (t + 1) + config.delta
        if cumulative >= peak:
            peak, peak_index = cumulative, t
        statistic = peak - cumulative
        if statistic > config.threshold:
            # The drop began right after the cumulative sum peaked.
            return DriftResult(True, True, statistic, t, peak_index + 1, len(values))
    return DriftResult(False, True, statistic, None, None, len(values))


def _cusum(values: Sequence[float], config: DriftConfig) -> DriftResult:
    reference = math.fsum(values[: config.reference_samples]) / config.reference_samples
    statistic, last_zero = 0.0, config.reference_samples - 1
    for t in range(config.reference_samples, len(values)):
        statistic = max(0.0, statistic + reference - values[t] - config.delta)
        if statistic == 0.0:
            last_zero = t
        if statistic > config.threshold:
            return DriftResult(True, True, statistic, t, last_zero + 1, len(values))
    return DriftResult(False, True, statistic, None, None, len(values))


def detect_drift(samples: Sequence[MetricSample], config: DriftConfig = DriftConfig()) -> DriftResult:
    """Runs the configured detector over the samples, oldest first.

    Args:
        samples: the current champion's evaluation samples (the caller filters by version).
        config: the detector and its parameters.

    Returns:
        The verdict; with fewer than ``config.min_samples`` samples it never alarms.

    Example:
        >>> from datetime import datetime, UTC
        >>> xs = [0.8] * 5 + [0.6]
        >>> s = [MetricSample(datetime(2026, 1, 1, i, tzinfo=UTC), x) for i, x in enumerate(xs)]
        >>> detect_drift(s).alarm_index
        5
    """
    ordered = sorted(samples, key=lambda s: s.at)
    values = [s.value for s in ordered]
    if len(values) < config.min_samples:
        return DriftResult(False, False, 0.0, None, None, len(values))
    if config.method == "cusum":
        return _cusum(values, config)
    return _page_hinkley(values, config)
