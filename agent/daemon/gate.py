"""The promotion gate of a cycle: :func:`policies.decide_promotion` with the effective policy and evidence.

Example ids may carry their slice as ``"<slice>/<id>"``; per-slice no-regression checks use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import policies
from agent.child.trainer import TrainingFailedError
from agent.cycle.trainer import EvalOutcome, Trainer
from agent.daemon.policy_inputs import promotion_config
from agent.daemon.runtime import Runtime

__all__ = ["base_model_scores", "make_gate", "paired_differences"]

log = logging.getLogger("qtha.cycle")


def make_gate(
    rt: Runtime, *, baseline: Callable[[], EvalOutcome | None] | None = None
) -> Callable[[EvalOutcome, EvalOutcome | None, datetime], policies.Decision]:
    """The promotion gate of the cycle: :func:`policies.decide_promotion` with the effective policy.

    Example ids may carry their slice as ``"<slice>/<id>"``; per-slice no-regression checks use it.

    Args:
        rt: the runtime (effective policy, metrics).
        baseline: scores of the base model without an adapter; with no champion yet, the first candidate is
            compared with it (an adapter that makes the base worse is not promoted), else ``None``.
    """

    def evaluation(outcome: EvalOutcome) -> policies.Evaluation:
        scores = tuple(
            policies.ExampleScore(
                example_id=key, score=float(value), slice=key.split("/", 1)[0] if "/" in key else "all"
            )
            for key, value in sorted(outcome.scores.items())
        )
        return policies.Evaluation(
            version=outcome.version_id,
            scores=scores,
            smoke_ok=bool(outcome.metrics.get("smoke_ok", 1.0)),
            trainable_params=int(outcome.metrics.get("trainable_params", 0)),
        )

    def gate(candidate: EvalOutcome, champion: EvalOutcome | None, now: datetime) -> policies.Decision:
        against = champion
        if against is None and baseline is not None:
            against = baseline()
        config = promotion_config(rt.policy())
        decision = policies.decide_promotion(
            evaluation(candidate),
            None if against is None else evaluation(against),
            now,
            config,
            seed=rt.config.training.seed,
        )
        if against is not None:
            compared = {
                "champion_mean": against.mean,
                "compared_with": against.version_id,
                # What the bootstrap resampled, kept so the console can draw the distribution behind the bound.
                "differences": paired_differences(candidate, against),
                "confidence": config.confidence,
            }
            decision = policies.Decision(
                decision.policy,
                decision.action,
                decision.at,
                decision.reasons,
                {**decision.evidence, **compared},
            )
        rt.metrics.decision("promotion", str(decision.action))
        for reason in decision.reasons:
            log.info("promotion %s: %s [%s] %s", decision.action, reason.code, reason.kind, reason.message)
        return decision

    return gate


def paired_differences(candidate: EvalOutcome, champion: EvalOutcome) -> dict[str, float]:
    """Candidate minus champion score per example id both scored (the pairs the promotion policy compares)."""
    shared = sorted(candidate.scores.keys() & champion.scores.keys())
    return {key: float(candidate.scores[key]) - float(champion.scores[key]) for key in shared}


def base_model_scores(rt: Runtime, trainer: Trainer) -> EvalOutcome | None:
    """The base model's held-out scores (an empty artifact: no adapter), cached like any evaluation; the first
    candidate is compared with them. ``None`` when they cannot be had: the gate then judges the candidate alone."""
    empty = rt.config.state_dir / "work" / "base-model"
    empty.mkdir(parents=True, exist_ok=True)
    try:
        return trainer.evaluate(empty, version_id="base")
    except (TrainingFailedError, FileNotFoundError) as exc:
        log.warning("could not score the base model for comparison: %s", exc)
        return None
