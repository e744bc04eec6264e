"""Which of several candidates trained in one cycle, if any, replaces the champion?

A cycle that trains N candidates at once compares each with the champion. Testing each at the single-candidate
confidence would promote a candidate that is no better than the champion N times as often as one cycle with one
candidate would (the best of N noisy draws looks good by chance), so the paired tests are corrected for multiple
comparisons with Holm's step-down procedure, which keeps the family-wise error at ``1 - confidence`` and rejects
no candidate that Bonferroni's correction would pass:

1. each candidate gets the one-sided bootstrap p-value of "no gain" on the paired held-out examples
   (:func:`policies.paired_bootstrap_p`), and the candidates are ranked by it (ties: larger mean gain first);
2. the candidate of rank ``r`` (0-based) is judged by the full promotion gate (:func:`policies.decide_promotion`:
   floor, minimum gain, slices, smoke test, size) with its bootstrap bound at confidence ``1 - alpha / (N - r)``,
   ``alpha = 1 - confidence``; the first candidate whose bound is not above zero stops the step-down, and every
   candidate ranked after it is rejected without being tested, as Holm's procedure requires;
3. of the candidates the corrected gate promotes, the one with the largest mean gain is chosen; the others are
   rejected with that reason. At most one candidate is promoted. With none to promote, the best held candidate
   (small slices, ``small_slice_action = "hold"``) is held; else every candidate is rejected.

The resample count is raised so that at least 50 resampled means lie beyond the strictest level's bound (2000
resamples place only six beyond a 0.3% quantile). With one candidate the selection is exactly
:func:`policies.decide_promotion`. Without a champion no paired test runs, so nothing is corrected: the candidate
with the best mean among those passing the absolute checks is chosen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, require_aware
from .promotion import PromotionConfig, _paired, decide_promotion, paired_bootstrap_p
from .records import Evaluation

__all__ = ["CandidateVerdict", "Selection", "holm_levels", "select_candidate"]

_F, _S, _N = ReasonKind.FIRED, ReasonKind.SUPPRESSED, ReasonKind.NOTE

# Resampled means wanted beyond the strictest bound, so the corrected quantile is not a handful of draws.
_TAIL_RESAMPLES = 50
_DEFAULT_CONFIG = PromotionConfig()


def holm_levels(count: int, alpha: float) -> tuple[float, ...]:
    """Holm's significance level per rank: ``alpha / count``, ``alpha / (count - 1)``, …, ``alpha``.

    Example:
        >>> holm_levels(3, 0.05)
        (0.016666666666666666, 0.025, 0.05)
    """
    if count < 1 or not 0 < alpha < 1:
        raise PolicyInputError(f"holm_levels needs count >= 1 and 0 < alpha < 1, got {count} and {alpha!r}")
    return tuple(alpha / (count - rank) for rank in range(count))


@dataclass(frozen=True)
class CandidateVerdict:
    """One candidate's part in a selection.

    Attributes:
        version: the candidate's version id.
        decision: its final promotion decision: the gate at its corrected confidence, turned into ``reject`` with
            the reason when the step-down stopped before it or another candidate was chosen.
        p_value: the bootstrap p-value of "no gain" it was ranked by (``None`` without a champion).
        rank: its place in the Holm order (0: the smallest p-value; ``None`` without a champion).
        confidence: the confidence its bootstrap bound was computed at.
        chosen: whether it is the candidate the cycle goes on with (promoted or held).
    """

    version: str
    decision: Decision
    p_value: float | None
    rank: int | None
    confidence: float
    chosen: bool

    @property
    def action(self) -> Action:
        return self.decision.action

    @property
    def mean_gain(self) -> float | None:
        gain = self.decision.evidence.get("mean_gain")
        return None if gain is None else float(gain)


@dataclass(frozen=True)
class Selection:
    """The answer of :func:`select_candidate`.

    Attributes:
        decision: policy ``selection``: ``promote`` (a candidate was chosen), ``hold`` (one is held for a human) or
            ``reject`` (none), with the correction and one reason per candidate; the evidence lists them all.
        verdicts: one per candidate, in the order given.
    """

    decision: Decision
    verdicts: tuple[CandidateVerdict, ...]

    @property
    def winner(self) -> str | None:
        """The chosen candidate's version (promoted or held), or ``None``."""
        return next((v.version for v in self.verdicts if v.chosen), None)


def select_candidate(
    candidates: Sequence[Evaluation],
    champion: Evaluation | None,
    now: datetime,
    config: PromotionConfig = _DEFAULT_CONFIG,
    *,
    seed: int = 0,
) -> Selection:
    """Judges ``candidates`` against ``champion`` with Holm's correction and chooses at most one.

    Args:
        candidates: the cycle's candidates' evaluations on the champion's held-out examples (distinct versions).
        champion: the champion's evaluation (or the base model's); ``None`` when there is nothing to compare with.
        now: the current instant (timezone-aware), stamped on every decision.
        config: the single-candidate thresholds; ``confidence`` is the family-wise confidence of the selection.
        seed: the bootstrap's seed (recorded).

    Returns:
        The selection decision and every candidate's verdict.

    Raises:
        PolicyInputError: no candidates, or two with the same version.
    """
    require_aware("now", now)
    versions = [c.version for c in candidates]
    if not versions:
        raise PolicyInputError("select_candidate needs at least one candidate")
    if len(set(versions)) != len(versions):
        raise PolicyInputError(f"select_candidate got repeated candidate versions {versions}")
    count = len(candidates)
    alpha = 1.0 - config.confidence
    if champion is None:
        return _without_champion(candidates, now, config, seed)
    resamples = max(config.n_resamples, math.ceil(_TAIL_RESAMPLES * count / alpha))
    p_values = [_p_value(c, champion, resamples, seed) for c in candidates]
    means = [c.mean if c.scores else -math.inf for c in candidates]
    order = sorted(range(count), key=lambda i: (p_values[i], -means[i], i))
    levels = holm_levels(count, alpha)
    judged: dict[int, tuple[Decision, int | None, float]] = {}
    stopped_at: str | None = None
    for rank, index in enumerate(order):
        level = levels[rank]
        confidence = 1.0 - level
        gate = decide_promotion(
            candidates[index],
            champion,
            now,
            dataclasses.replace(config, confidence=confidence, n_resamples=resamples),
            seed=seed,
        )
        correction = {"method": "holm", "rank": rank + 1, "of": count, "level": level, "p_value": p_values[index]}
        gate = _amend(gate, evidence={"correction": correction})
        if stopped_at is not None:
            gate = _amend(
                gate,
                action=Action.REJECT,
                reason=Reason(
                    "holm_stopped",
                    _S,
                    f"not significant under Holm's correction: the step-down stopped at {stopped_at}, whose "
                    f"p-value is smaller (this one's {p_values[index]:.4g})",
                ),
            )
        elif "bootstrap_lcb" in gate.codes(_S):
            stopped_at = candidates[index].version
        judged[index] = (gate, rank, confidence)
    return _choose(candidates, judged, p_values, now, alpha, resamples, seed)


def _p_value(candidate: Evaluation, champion: Evaluation, resamples: int, seed: int) -> float:
    _ids, diffs, _slices = _paired(candidate, champion)
    return 1.0 if diffs.size == 0 else paired_bootstrap_p(diffs, n_resamples=resamples, seed=seed)


def _amend(
    decision: Decision,
    *,
    action: Action | None = None,
    reason: Reason | None = None,
    evidence: dict[str, Any] | None = None,
) -> Decision:
    return Decision(
        decision.policy,
        action or decision.action,
        decision.at,
        decision.reasons + ((reason,) if reason is not None else ()),
        {**decision.evidence, **(evidence or {})},
    )


def _best(indices: list[int], gains: dict[int, float], p_values: Sequence[float | None]) -> int | None:
    """The largest mean gain; ties: the smaller p-value, then the earlier candidate."""
    if not indices:
        return None
    return min(indices, key=lambda i: (-gains[i], p_values[i] if p_values[i] is not None else 0.0, i))


def _choose(
    candidates: Sequence[Evaluation],
    judged: dict[int, tuple[Decision, int | None, float]],
    p_values: Sequence[float | None],
    now: datetime,
    alpha: float,
    resamples: int,
    seed: int,
) -> Selection:
    count = len(candidates)
    compared = p_values[0] is not None
    # What "best" means: the mean gain over the champion, or the mean itself when there is no champion.
    gains = {i: _finite_or_worst(d.evidence.get("mean_gain" if compared else "candidate_mean"))
             for i, (d, _r, _c) in judged.items()}
    promotable = [i for i in range(count) if judged[i][0].action is Action.PROMOTE]
    held = [i for i in range(count) if judged[i][0].action is Action.HOLD]
    chosen = _best(promotable, gains, p_values)
    action = Action.PROMOTE
    if chosen is None:
        chosen, action = _best(held, gains, p_values), Action.HOLD
    if chosen is None:
        action = Action.REJECT
    reasons: list[Reason] = []
    if compared and count > 1:
        levels = ", ".join(f"{level:.4g}" for level in holm_levels(count, alpha))
        reasons.append(
            Reason(
                "holm_correction",
                _N,
                f"{count} candidates against the champion: Holm's step-down keeps the family-wise error at "
                f"{alpha:.4g}, testing by rank at levels {levels}",
            )
        )
    verdicts = []
    for i, candidate in enumerate(candidates):
        gate, rank, confidence = judged[i]
        version = candidate.version
        if i == chosen:
            reasons.append(Reason("chosen", _F, f"{version}: {_gain_text(gains[i], compared)}, {_verb(action)}"))
        elif gate.action is not Action.REJECT and chosen is not None:
            how = "passed" if gate.action is Action.PROMOTE else "was held by"
            why = (
                f"{how} the {'corrected ' if compared else ''}gate, but {candidates[chosen].version} was chosen "
                f"({_gain_text(gains[chosen], compared)} against {_gain_text(gains[i], compared)}); at most one "
                "candidate is promoted"
            )
            gate = _amend(gate, action=Action.REJECT, reason=Reason("outgained", _S, why))
            reasons.append(Reason("outgained", _S, f"{version}: {why}"))
        else:
            failed = [r.code for r in gate.reasons if r.kind is _S]
            reasons.append(Reason("failed_gate", _S, f"{version}: rejected ({', '.join(failed)})"))
        verdicts.append(
            CandidateVerdict(version, gate, p_values[i], rank, confidence, chosen=i == chosen)
        )
    evidence: dict[str, Any] = {
        "correction": "holm" if compared and count > 1 else "none",
        "alpha": alpha,
        "n_resamples": resamples,
        "seed": seed,
        "winner": None if chosen is None else candidates[chosen].version,
        "candidates": [
            {
                "version": v.version,
                "action": str(v.action),
                "mean": candidates[i].mean,
                "mean_gain": v.mean_gain,
                "p_value": v.p_value,
                "rank": None if v.rank is None else v.rank + 1,
                "confidence": v.confidence,
                "chosen": v.chosen,
            }
            for i, v in enumerate(verdicts)
        ],
    }
    return Selection(Decision("selection", action, now, tuple(reasons), evidence), tuple(verdicts))


def _without_champion(
    candidates: Sequence[Evaluation], now: datetime, config: PromotionConfig, seed: int
) -> Selection:
    """No champion and no baseline: only the absolute checks apply, no test to correct; the best mean wins."""
    judged: dict[int, tuple[Decision, int | None, float]] = {
        i: (decide_promotion(c, None, now, config, seed=seed), None, config.confidence)
        for i, c in enumerate(candidates)
    }
    return _choose(candidates, judged, [None] * len(candidates), now, 1.0 - config.confidence,
                   config.n_resamples, seed)


def _finite_or_worst(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else -math.inf


def _gain_text(value: float, compared: bool) -> str:
    if not math.isfinite(value):
        return "no score"
    return f"mean gain {value:+.4g}" if compared else f"mean {value:.4g}"


def _verb(action: Action) -> str:
    return {Action.PROMOTE: "promoted", Action.HOLD: "held for a human"}.get(action, "rejected")
