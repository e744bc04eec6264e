"""Should the candidate replace the champion? Compared on the same held-out examples, paired by example id.

Checks (all are evaluated and all are listed):

1. smoke test passed (servable);
2. parameter budget: trainable parameters at most ``max_params``;
3. absolute floor: the candidate's mean score at least ``floor``;
4. with a champion: minimum gain (mean paired difference at least ``min_gain``);
5. a one-sided paired bootstrap lower confidence bound of the mean difference strictly above zero;
6. no regression in any slice with at least ``min_slice_examples`` paired examples (the slice's mean
   difference at least ``-slice_tolerance``). Smaller slices cannot be judged: each is reported, and with
   ``small_slice_action = "hold"`` a candidate that passes everything else is held for a human.

Without a champion (the first candidate) only 1-3 apply. Any failed check rejects; otherwise small slices hold;
otherwise the candidate is promoted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np

from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, require_aware
from .records import Evaluation

__all__ = ["PromotionConfig", "decide_promotion", "paired_bootstrap_lcb", "paired_bootstrap_p"]

_F, _S, _N = ReasonKind.FIRED, ReasonKind.SUPPRESSED, ReasonKind.NOTE


@dataclass(frozen=True)
class PromotionConfig:
    """Promotion thresholds.

    Attributes:
        floor: the least mean score a candidate may have, champion or not.
        min_gain: the least mean paired improvement over the champion (>= 0).
        confidence: one-sided confidence of the bootstrap lower bound.
        n_resamples: bootstrap resamples.
        min_slice_examples: paired examples a slice needs to be judged.
        slice_tolerance: the largest mean drop a judged slice may show (>= 0).
        small_slice_action: ``"hold"`` (a human decides) or ``"report"`` (listed as a note, not judged).
        max_params: the parameter budget (``None``: unlimited).
    """

    floor: float = 0.0
    min_gain: float = 0.0
    confidence: float = 0.95
    n_resamples: int = 2000
    min_slice_examples: int = 20
    slice_tolerance: float = 0.0
    small_slice_action: Literal["hold", "report"] = "hold"
    max_params: int | None = None

    def __post_init__(self) -> None:
        if self.min_gain < 0 or self.slice_tolerance < 0:
            raise PolicyInputError(
                f"PromotionConfig min_gain = {self.min_gain!r} and slice_tolerance = {self.slice_tolerance!r} "
                "must be >= 0 (a negative gain would promote a worse model)"
            )
        if not 0.5 <= self.confidence < 1 or self.n_resamples < 100:
            raise PolicyInputError(
                f"PromotionConfig confidence = {self.confidence!r} must be in [0.5, 1) and n_resamples = "
                f"{self.n_resamples} >= 100"
            )
        if self.small_slice_action not in ("hold", "report"):
            raise PolicyInputError(
                f"small_slice_action = {self.small_slice_action!r}; use 'hold' or 'report'"
            )


def paired_bootstrap_lcb(
    differences: np.ndarray, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> float:
    """One-sided percentile-bootstrap lower confidence bound of the mean of paired differences.

    Resamples the examples (rows) with replacement ``n_resamples`` times with ``numpy.random.default_rng(seed)``
    and returns the ``1 - confidence`` quantile of the resampled means (numpy's ``"lower"`` order statistic, so
    the bound is always one of the resampled means).

    Example:
        >>> paired_bootstrap_lcb(np.full(10, 0.1))
        0.1
    """
    diffs = _differences(differences)
    means = _bootstrap_means(diffs, n_resamples, seed)
    # Identical differences must give exactly their value, not a sum's rounding of it.
    if np.all(diffs == diffs[0]):
        return float(diffs[0])
    return float(np.quantile(means, 1.0 - confidence, method="lower"))


def paired_bootstrap_p(differences: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> float:
    """One-sided bootstrap p-value of "no gain": the share of resampled means of the paired differences that
    are at most zero (the same resamples as :func:`paired_bootstrap_lcb` with the same seed, so the bound at
    confidence ``1 - a`` is above zero about exactly when this is below ``a``). Multiple-comparison corrections
    rank candidates by it (:func:`policies.select_candidate`).

    Example:
        >>> paired_bootstrap_p(np.full(10, 0.1)), paired_bootstrap_p(np.zeros(10))
        (0.0, 1.0)
    """
    diffs = _differences(differences)
    if np.all(diffs == diffs[0]):  # no sampling variation: certain either way
        return 0.0 if diffs[0] > 0 else 1.0
    means = _bootstrap_means(diffs, n_resamples, seed)
    return float(np.count_nonzero(means <= 0.0) / n_resamples)


def _differences(differences: np.ndarray) -> np.ndarray:
    diffs = np.asarray(differences, dtype=np.float64)
    if diffs.ndim != 1 or diffs.size == 0:
        raise PolicyInputError(f"need a non-empty 1-D array of differences, got shape {diffs.shape}")
    return diffs


def _bootstrap_means(diffs: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples`` means of ``diffs`` resampled with replacement by ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // diffs.size)  # bound memory to ~16 MB of indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, diffs.size, size=(stop - start, diffs.size))
        means[start:stop] = diffs[idx].mean(axis=1)
    return means


def _paired(candidate: Evaluation, champion: Evaluation) -> tuple[list[str], np.ndarray, list[str]]:
    """Example ids scored by both (sorted), their differences and slices (the candidate's labels)."""
    cand = {s.example_id: s for s in candidate.scores}
    champ = {s.example_id: s.score for s in champion.scores}
    ids = sorted(cand.keys() & champ.keys())
    diffs = np.array([cand[i].score - champ[i] for i in ids], dtype=np.float64)
    return ids, diffs, [cand[i].slice for i in ids]


def _basic_checks(candidate: Evaluation, config: PromotionConfig, reasons: list[Reason]) -> bool:
    ok = True
    detail = f": {candidate.smoke_detail}" if candidate.smoke_detail else ""
    if candidate.smoke_ok:
        reasons.append(Reason("smoke_test", _F, f"the servability smoke test passed{detail}"))
    else:
        reasons.append(Reason("smoke_test", _S, f"the servability smoke test failed{detail}"))
        ok = False
    if config.max_params is not None:
        fits = candidate.trainable_params <= config.max_params
        reasons.append(
            Reason(
                "param_budget",
                _F if fits else _S,
                f"{candidate.trainable_params} trainable parameters {'<=' if fits else '>'} {config.max_params}",
            )
        )
        ok &= fits
    if not candidate.scores:
        reasons.append(Reason("floor", _S, "the candidate has no evaluation scores"))
        return False
    above = candidate.mean >= config.floor
    reasons.append(
        Reason(
            "floor",
            _F if above else _S,
            f"mean {candidate.mean:.4g} {'>=' if above else '<'} floor {config.floor:g}",
        )
    )
    return ok and above


def _slice_checks(
    diffs: np.ndarray, slices: list[str], config: PromotionConfig, reasons: list[Reason]
) -> tuple[bool, list[str], dict[str, Any]]:
    by_slice: dict[str, list[float]] = defaultdict(list)
    for d, name in zip(diffs, slices, strict=True):
        by_slice[name].append(float(d))
    ok, small, evidence = True, [], {}
    for name in sorted(by_slice):
        values = by_slice[name]
        mean = math.fsum(values) / len(values)
        evidence[name] = {"n": len(values), "mean_difference": mean}
        if len(values) < config.min_slice_examples:
            small.append(name)
            reasons.append(
                Reason(
                    "slice_too_small",
                    _N,
                    f"slice {name!r}: {len(values)} paired examples < {config.min_slice_examples}, not judged "
                    f"(mean difference {mean:+.4g})",
                )
            )
        elif mean < -config.slice_tolerance:
            ok = False
            reasons.append(
                Reason(
                    "slice_regression",
                    _S,
                    f"slice {name!r} regressed: mean difference {mean:+.4g} (n={len(values)})",
                )
            )
    if ok:
        judged = len(by_slice) - len(small)
        reasons.append(Reason("slices", _F, f"no regression in the {judged} slices large enough to judge"))
    return ok, small, evidence


def decide_promotion(
    candidate: Evaluation,
    champion: Evaluation | None,
    now: datetime,
    config: PromotionConfig = PromotionConfig(),
    *,
    seed: int = 0,
) -> Decision:
    """Decides whether to promote, reject or hold the candidate.

    Args:
        candidate: the new model's evaluation.
        champion: the live champion's evaluation on the same held-out set; ``None`` when there is none yet.
        now: the current instant (timezone-aware), stamped on the decision.
        config: thresholds.
        seed: the bootstrap's seed (recorded in the evidence).

    Returns:
        ``promote``, ``reject`` or ``hold`` with every check's reason and the numbers behind them.
    """
    require_aware("now", now)
    reasons: list[Reason] = []
    ok = _basic_checks(candidate, config, reasons)
    evidence: dict[str, Any] = {
        "candidate": candidate.version,
        "candidate_mean": candidate.mean,
        "trainable_params": candidate.trainable_params,
        "seed": seed,
    }
    if champion is None:
        reasons.append(
            Reason("no_champion", _N, "no champion yet: only the smoke test, floor and size apply")
        )
        return Decision("promotion", Action.PROMOTE if ok else Action.REJECT, now, tuple(reasons), evidence)

    ids, diffs, slices = _paired(candidate, champion)
    unpaired = len(candidate.scores) + len(champion.scores) - 2 * len(ids)
    evidence |= {"champion": champion.version, "paired_examples": len(ids), "unpaired_examples": unpaired}
    if unpaired:
        reasons.append(
            Reason("unpaired_examples", _N, f"{unpaired} examples scored by only one model were ignored")
        )
    if not ids:
        reasons.append(Reason("no_paired_examples", _S, "candidate and champion share no example ids"))
        return Decision("promotion", Action.REJECT, now, tuple(reasons), evidence)

    gain = math.fsum(diffs.tolist()) / len(ids)
    # Strictly positive as well: a tie never replaces a champion that is already serving.
    gained = gain >= config.min_gain and gain > 0
    verdict = "meets" if gained else "misses"
    reasons.append(
        Reason(
            "min_gain",
            _F if gained else _S,
            f"mean gain {gain:+.4g} {verdict} >= {config.min_gain:g} and > 0",
        )
    )
    lcb = paired_bootstrap_lcb(diffs, confidence=config.confidence, n_resamples=config.n_resamples, seed=seed)
    significant = lcb > 0
    reasons.append(
        Reason(
            "bootstrap_lcb",
            _F if significant else _S,
            f"{_percent(config.confidence)} lower bound of the mean gain {lcb:+.4g} {'>' if significant else '<='} 0",
        )
    )
    slices_ok, small, slice_evidence = _slice_checks(diffs, slices, config, reasons)
    evidence |= {"champion_mean": champion.mean, "mean_gain": gain, "lcb": lcb, "slices": slice_evidence}
    if not (ok and gained and significant and slices_ok):
        action = Action.REJECT
    elif small and config.small_slice_action == "hold":
        action = Action.HOLD
        reasons.append(
            Reason("hold_for_human", _S, f"slices {small} are too small to judge: a human decides")
        )
    else:
        action = Action.PROMOTE
    return Decision("promotion", action, now, tuple(reasons), evidence)


def _percent(share: float) -> str:
    """``0.95`` as ``95%``; a corrected level such as ``1 - 0.05/3`` as ``98.33%`` rather than a rounded ``98%``."""
    whole = f"{share:.0%}"
    return whole if abs(round(share * 100) - share * 100) < 1e-9 else f"{share:.2%}"
