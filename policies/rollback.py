"""After a promotion, during the bake period: roll back when the live champion does worse than its predecessor.

Rolls back when ``now`` is within ``bake_period`` of the promotion, at least ``min_samples`` live samples of the
new champion were recorded since the promotion, and their mean is below the previous champion's metric by more
than ``margin``. After the bake period the new champion stays (degradation then is the trigger's drift detector's
business: it trains a better model rather than returning to an older one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind, require_aware
from .records import MetricSample

__all__ = ["PromotionRecord", "RollbackConfig", "decide_rollback"]

_F, _S = ReasonKind.FIRED, ReasonKind.SUPPRESSED
_TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class RollbackConfig:
    """When to roll back automatically.

    Attributes:
        bake_period: how long after a promotion an automatic rollback may happen.
        margin: how far (metric units) below the previous champion the live mean must fall.
        min_samples: live samples needed before judging (one bad evaluation is not enough).
    """

    bake_period: timedelta = timedelta(hours=24)
    margin: float = 0.02
    min_samples: int = 3

    def __post_init__(self) -> None:
        if self.bake_period <= timedelta(0) or self.margin < 0 or self.min_samples < 1:
            raise PolicyInputError(
                f"RollbackConfig bake_period = {self.bake_period} must be > 0, margin = {self.margin!r} >= 0, "
                f"min_samples = {self.min_samples} >= 1"
            )


@dataclass(frozen=True)
class PromotionRecord:
    """The latest promotion.

    Attributes:
        version: the promoted (now live) version.
        previous_version: the champion it replaced (``None``: the first champion, nothing to roll back to).
        promoted_at: when the champion pointer moved.
        previous_metric: the previous champion's metric on the same evaluation (higher is better).
    """

    version: str
    previous_version: str | None
    promoted_at: datetime
    previous_metric: float | None

    def __post_init__(self) -> None:
        require_aware("PromotionRecord.promoted_at", self.promoted_at)
        if (self.previous_version is None) != (self.previous_metric is None):
            raise PolicyInputError(
                f"PromotionRecord {self.version!r}: previous_version and previous_metric are both set or both None"
            )


def decide_rollback(
    promotion: PromotionRecord,
    live: Sequence[MetricSample],
    now: datetime,
    config: RollbackConfig = RollbackConfig(),
) -> Decision:
    """Decides whether to roll the latest promotion back.

    Args:
        promotion: the latest promotion.
        live: evaluation samples; only those of ``promotion.version`` in ``[promoted_at, now]`` count.
        now: the current instant (timezone-aware).
        config: bake period, margin, minimum samples.

    Returns:
        ``rollback`` or ``keep`` with the reasons and the live mean against the previous champion's metric.
    """
    require_aware("now", now)
    samples = [
        s.value for s in live if s.version == promotion.version and promotion.promoted_at <= s.at <= now
    ]
    mean = math.fsum(samples) / len(samples) if samples else None
    evidence = {
        "version": promotion.version,
        "previous_version": promotion.previous_version,
        "previous_metric": promotion.previous_metric,
        "live_mean": mean,
        "live_samples": len(samples),
        "baked_s": now - promotion.promoted_at,
    }
    reasons: list[Reason] = []
    if promotion.previous_metric is None:
        reasons.append(Reason("no_previous_champion", _S, "the first champion has nothing to roll back to"))
        return Decision("rollback", Action.KEEP, now, tuple(reasons), evidence)
    if now - promotion.promoted_at > config.bake_period:
        reasons.append(
            Reason(
                "baked", _S, f"promoted {now - promotion.promoted_at} ago > bake period {config.bake_period}"
            )
        )
        return Decision("rollback", Action.KEEP, now, tuple(reasons), evidence)
    if mean is None or len(samples) < config.min_samples:
        reasons.append(
            Reason("insufficient_samples", _S, f"{len(samples)} live sample(s) < {config.min_samples}")
        )
        return Decision("rollback", Action.KEEP, now, tuple(reasons), evidence)
    limit = promotion.previous_metric - config.margin
    # A tie keeps the champion; the tolerance stops 0.8 - 0.02 = 0.7800000000000001 from breaking a tie at 0.78.
    if mean < limit - _TIE_TOLERANCE:
        reasons.append(
            Reason(
                "live_below_previous",
                _F,
                f"live mean {mean:.4g} of {promotion.version!r} < previous {promotion.previous_version!r} "
                f"{promotion.previous_metric:.4g} - margin {config.margin:g}",
            )
        )
        return Decision("rollback", Action.ROLLBACK, now, tuple(reasons), evidence)
    reasons.append(Reason("live_holds", _S, f"live mean {mean:.4g} >= {limit:.4g} (previous minus margin)"))
    return Decision("rollback", Action.KEEP, now, tuple(reasons), evidence)
