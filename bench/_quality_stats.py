"""The quality study's paired comparison: arm minus baseline on the same held-out examples, with a percentile
bootstrap interval. The per-example measurements come from ``model.evaluate`` (the daemon's evaluator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDiff", "paired_bootstrap"]


@dataclass(frozen=True)
class PairedDiff:
    """Arm minus baseline on the same held-out examples, with a percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    n_examples: int
    n_resamples: int
    confidence: float


def paired_bootstrap(
    arm: np.ndarray,
    base: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    n_resamples: int,
    confidence: float = 0.95,
    seed: int,
) -> PairedDiff:
    """Paired bootstrap of ``statistic(arm) - statistic(base)`` over held-out examples.

    With ``weights`` (token counts), the statistic is the weighted mean of per-example values: for losses, pass
    per-example summed NLL divided by tokens as values and the tokens as weights, which gives the held-out
    token-weighted loss. Without, it is the plain mean (exact-match accuracy).

    Args:
        arm: per-example values of the arm (already averaged over its seeds).
        base: per-example values of the baseline, same examples in the same order.
        weights: per-example weights shared by both (the same examples have the same tokens).
        n_resamples: bootstrap resamples.
        confidence: two-sided interval coverage.
        seed: seeds the resampling.
    """
    if arm.shape != base.shape:
        raise ValueError(f"paired values need equal shapes, got {arm.shape} and {base.shape}")
    w = np.ones_like(arm) if weights is None else np.asarray(weights, np.float64)
    d = (arm - base) * w
    n = len(d)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    stats = d[idx].sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return PairedDiff(float(d.sum() / w.sum()), float(low), float(high), n, n_resamples, confidence)

