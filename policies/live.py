"""Live signals: two versions compared on real traffic (the canary against the champion, a new champion against
the one it replaced).

Each signal is a proportion or a mean over requests: error rate, empty/degenerate-answer rate, answer-verification
rate, feedback score. A version is *worse* on a signal when it is worse than the other by more than ``margin`` with
one-sided confidence ``confidence`` (a two-proportion z-test for rates, Welch's z for the feedback mean), judged
only when both sides have at least ``min_samples`` observations of that signal; latency is worse when the mean is
more than ``latency_ratio`` times the other's. :func:`decide_canary` turns the comparison into promote / extend /
abort; :func:`decide_live_rollback` into rollback / keep.

Example:
    >>> champ = LiveStats("c1", requests=400, errors=4, answered=396, degenerate=8)
    >>> bad = LiveStats("c2", requests=100, errors=1, answered=99, degenerate=30)
    >>> compare_live(bad, champ, LiveConfig()).verdict
    'worse'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from statistics import NormalDist

from .decision import Action, Decision, Reason, ReasonKind, require_aware

__all__ = ["LiveComparison", "LiveConfig", "LiveStats", "compare_live", "decide_canary", "decide_live_rollback"]

_F, _S, _N = ReasonKind.FIRED, ReasonKind.SUPPRESSED, ReasonKind.NOTE


@dataclass(frozen=True)
class LiveStats:
    """What one version did on live traffic over a period (counts, so two periods add up).

    Attributes:
        requests: chat requests received; errors: those answered with a non-200 status.
        answered: answers returned (status 200); degenerate: those empty or degenerate repetition.
        latency_sum_s: summed latency of the answered requests.
        checked: answers with a known correct answer (feedback or the prompt's own); verified: those correct.
        feedback_n / feedback_sum / feedback_sq: count, sum and sum of squares of feedback scores (0..1).
    """

    version: str
    requests: int = 0
    errors: int = 0
    answered: int = 0
    degenerate: int = 0
    latency_sum_s: float = 0.0
    checked: int = 0
    verified: int = 0
    feedback_n: int = 0
    feedback_sum: float = 0.0
    feedback_sq: float = 0.0

    def rates(self) -> dict[str, float | None]:
        """The documented ``live_*`` values (None where nothing was observed)."""

        def ratio(a: float, b: int) -> float | None:
            return a / b if b else None

        return {
            "live_requests": float(self.requests),
            "live_error_rate": ratio(self.errors, self.requests),
            "live_degenerate_rate": ratio(self.degenerate, self.answered),
            "live_latency_s": ratio(self.latency_sum_s, self.answered),
            "live_verified_rate": ratio(self.verified, self.checked),
            "live_feedback_score": ratio(self.feedback_sum, self.feedback_n),
        }


@dataclass(frozen=True)
class LiveConfig:
    min_samples: int = 30
    margin: float = 0.02
    confidence: float = 0.95
    latency_ratio: float = 1.5


@dataclass(frozen=True)
class LiveComparison:
    """``worse`` (some signal significantly worse), ``not_worse`` or ``insufficient`` (too few requests)."""

    verdict: str
    reasons: tuple[Reason, ...]
    evidence: dict[str, object]


def _proportion_worse(
    name: str, bad_a: int, n_a: int, bad_b: int, n_b: int, config: LiveConfig, *, higher_is_better: bool
) -> tuple[bool, str]:
    """Is A's rate worse than B's by more than the margin, one-sided at the confidence?"""
    pa, pb = bad_a / n_a, bad_b / n_b
    excess = (pb - pa) if higher_is_better else (pa - pb)  # how much worse A is
    pooled = (bad_a + bad_b) / (n_a + n_b)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_a + 1 / n_b))
    z = (excess - config.margin) / se
    worse = z > NormalDist().inv_cdf(config.confidence)
    return worse, f"{name} {pa:.3f} vs {pb:.3f} (n {n_a} vs {n_b}, z {z:.2f} beyond margin {config.margin})"


def compare_live(a: LiveStats, b: LiveStats, config: LiveConfig) -> LiveComparison:
    """Is ``a`` worse than ``b`` on live traffic? (See the module docstring.)"""
    evidence: dict[str, object] = {"a": asdict(a), "b": asdict(b), "config": asdict(config)}
    reasons: list[Reason] = []
    n = config.min_samples
    if a.requests < n or b.requests < n:
        reasons.append(
            Reason("live_insufficient", _N, f"{a.version} had {a.requests} and {b.version} {b.requests} requests; "
                   f"each needs {n} to be compared")
        )
        return LiveComparison("insufficient", tuple(reasons), evidence)
    worse = False
    checks = [
        ("error rate", a.errors, a.requests, b.errors, b.requests, False),
        ("empty/degenerate rate", a.degenerate, a.answered, b.degenerate, b.answered, False),
        ("verification rate", a.verified, a.checked, b.verified, b.checked, True),
    ]
    for name, xa, na, xb, nb, higher in checks:
        if na < n or nb < n:
            reasons.append(Reason("live_not_judged", _N, f"{name}: {na} vs {nb} observations < {n}"))
            continue
        bad, text = _proportion_worse(name, xa, na, xb, nb, config, higher_is_better=higher)
        reasons.append(Reason("live_worse" if bad else "live_ok", _S if bad else _F, text))
        worse |= bad
    if a.feedback_n >= n and b.feedback_n >= n:
        ma, mb = a.feedback_sum / a.feedback_n, b.feedback_sum / b.feedback_n
        va = max(a.feedback_sq / a.feedback_n - ma * ma, 0.0)
        vb = max(b.feedback_sq / b.feedback_n - mb * mb, 0.0)
        se = math.sqrt(max(va / a.feedback_n + vb / b.feedback_n, 1e-12))
        z = ((mb - ma) - config.margin) / se
        bad = z > NormalDist().inv_cdf(config.confidence)
        text = f"feedback score {ma:.3f} vs {mb:.3f} (n {a.feedback_n} vs {b.feedback_n}, z {z:.2f})"
        reasons.append(Reason("live_worse" if bad else "live_ok", _S if bad else _F, text))
        worse |= bad
    if a.answered and b.answered and b.latency_sum_s > 0:
        la, lb = a.latency_sum_s / a.answered, b.latency_sum_s / b.answered
        bad = la > config.latency_ratio * lb
        text = f"latency {la:.3f} s vs {lb:.3f} s (worse beyond {config.latency_ratio}x)"
        reasons.append(Reason("live_worse" if bad else "live_ok", _S if bad else _F, text))
        worse |= bad
    return LiveComparison("worse" if worse else "not_worse", tuple(reasons), evidence)


def decide_canary(
    canary: LiveStats,
    champion: LiveStats,
    now: datetime,
    *,
    started_at: datetime,
    bake: timedelta,
    extensions: int,
    max_extensions: int,
    config: LiveConfig,
) -> Decision:
    """Promote, extend or abort a canary; ``wait`` while it bakes and nothing is significantly worse.

    A significantly worse canary is aborted at once. Once the bake period (times ``1 + extensions``) has passed:
    not worse → promote; too few requests → extend, up to ``max_extensions``, after which the offline gate's
    verdict stands (promote, with a note that live traffic could not judge it).
    """
    require_aware("now", now)
    cmp = compare_live(canary, champion, config)
    elapsed = now - started_at
    due = started_at + bake * (1 + extensions)
    evidence = {**cmp.evidence, "elapsed_s": elapsed.total_seconds(), "extensions": extensions}
    reasons = list(cmp.reasons)
    if cmp.verdict == "worse":
        reasons.append(Reason("canary_worse", _S, f"canary {canary.version} is worse than champion on live traffic"))
        return Decision("canary", Action.ABORT, now, tuple(reasons), evidence)
    if now < due:
        reasons.append(Reason("baking", _N, f"baking until {due.isoformat()} ({elapsed} so far)"))
        return Decision("canary", Action.WAIT, now, tuple(reasons), evidence)
    if cmp.verdict == "insufficient":
        if extensions < max_extensions:
            reasons.append(Reason("extend", _F, f"too few live samples: bake period extended ({extensions + 1} of "
                                                f"{max_extensions})"))
            return Decision("canary", Action.EXTEND, now, tuple(reasons), evidence)
        reasons.append(Reason("no_live_verdict", _N, "still too few live samples after every extension: the offline "
                                                     "gate's verdict stands"))
        return Decision("canary", Action.PROMOTE, now, tuple(reasons), evidence)
    reasons.append(Reason("canary_ok", _F, f"canary {canary.version} is not worse than the champion on live traffic"))
    return Decision("canary", Action.PROMOTE, now, tuple(reasons), evidence)


def decide_live_rollback(
    current: LiveStats,
    previous: LiveStats,
    now: datetime,
    *,
    promoted_at: datetime,
    bake: timedelta,
    config: LiveConfig,
) -> Decision:
    """Roll a promotion back when the new champion is significantly worse on live traffic than the one it
    replaced was (its traffic before the promotion), while within the bake period."""
    require_aware("now", now)
    if now - promoted_at > bake:
        reason = Reason("baked", _S, f"promoted {now - promoted_at} ago > bake period {bake}")
        return Decision("rollback", Action.KEEP, now, (reason,), {"promoted_at": promoted_at.isoformat()})
    cmp = compare_live(current, previous, config)
    reasons = list(cmp.reasons)
    if cmp.verdict == "worse":
        reasons.append(Reason("live_degraded", _F, f"{current.version} is worse live than {previous.version} was"))
        return Decision("rollback", Action.ROLLBACK, now, tuple(reasons), cmp.evidence)
    return Decision("rollback", Action.KEEP, now, tuple(reasons), cmp.evidence)
