"""The promotion gate of a cycle: :func:`policies.decide_promotion` with the effective policy and evidence, and
for a cycle with several candidates the selection gate (:func:`policies.select_candidate`, Holm's correction).

Example ids may carry their slice as ``"<slice>/<id>"``; per-slice no-regression checks use it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import policies
from agent.child.trainer import TrainingFailedError
from agent.cycle.trainer import EvalOutcome, Trainer
from agent.daemon.policy_inputs import promotion_config
from agent.daemon.runtime import Runtime

__all__ = ["base_model_scores", "make_gate", "make_selector", "paired_differences", "to_evaluation"]

log = logging.getLogger("qtha.cycle")


def to_evaluation(outcome: EvalOutcome, smoke: policies.SmokeVerdict | None = None) -> policies.Evaluation:
    """An evaluation as the promotion policy reads it (example ids ``"<slice>/<id>"`` carry their slice)."""
    scores = tuple(
        policies.ExampleScore(example_id=key, score=float(value), slice=key.split("/", 1)[0] if "/" in key else "all")
        for key, value in sorted(outcome.scores.items())
    )
    return policies.Evaluation(
        version=outcome.version_id,
        scores=scores,
        smoke_ok=bool(outcome.metrics.get("smoke_ok", 1.0)) and (smoke is None or smoke.ok),
        trainable_params=int(outcome.metrics.get("trainable_params", 0)),
        smoke_detail="" if smoke is None else smoke.message,
    )


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

    def gate(candidate: EvalOutcome, champion: EvalOutcome | None, now: datetime) -> policies.Decision:
        against = champion if champion is not None or baseline is None else baseline()
        smoke = _smoke(rt, candidate, against)
        config = promotion_config(rt.policy())
        decision = policies.decide_promotion(
            to_evaluation(candidate, smoke),
            None if against is None else to_evaluation(against),
            now,
            config,
            seed=rt.config.training.seed,
        )
        return _logged(rt, _with_context(decision, candidate, against, smoke, config.confidence))

    return gate


def make_selector(
    rt: Runtime, *, baseline: Callable[[], EvalOutcome | None] | None = None
) -> Callable[[Sequence[EvalOutcome], EvalOutcome | None, datetime], policies.Selection]:
    """The selection gate of a cycle that trains several candidates: :func:`policies.select_candidate` (Holm's
    correction, at most one chosen) with the effective policy, each candidate's smoke test against the version
    serving now, and the same evidence per candidate as :func:`make_gate` records for one.

    Args:
        rt: the runtime (effective policy, metrics).
        baseline: the base model's scores, compared with when there is no champion yet (see :func:`make_gate`).
    """

    def select(
        candidates: Sequence[EvalOutcome], champion: EvalOutcome | None, now: datetime
    ) -> policies.Selection:
        against = champion if champion is not None or baseline is None else baseline()
        smokes = [_smoke(rt, c, against) for c in candidates]
        selection = policies.select_candidate(
            [to_evaluation(c, s) for c, s in zip(candidates, smokes, strict=True)],
            None if against is None else to_evaluation(against),
            now,
            promotion_config(rt.policy()),
            seed=rt.config.training.seed,
        )
        verdicts = tuple(
            dataclasses.replace(v, decision=_logged(rt, _with_context(v.decision, c, against, s, v.confidence)))
            for v, c, s in zip(selection.verdicts, candidates, smokes, strict=True)
        )
        rt.metrics.decision("selection", str(selection.decision.action))
        for reason in selection.decision.reasons:
            log.info("selection %s: %s [%s] %s", selection.decision.action, reason.code, reason.kind, reason.message)
        return policies.Selection(selection.decision, verdicts)

    return select


def _smoke(rt: Runtime, candidate: EvalOutcome, against: EvalOutcome | None) -> policies.SmokeVerdict:
    """The smoke test against the version serving now (the champion, else the base model)."""
    return policies.smoke_verdict(
        candidate.probes,
        against.probes if against is not None and against.probes else None,
        tolerance=rt.config.evaluation.smoke_tolerance,
    )


def _with_context(
    decision: policies.Decision,
    candidate: EvalOutcome,
    against: EvalOutcome | None,
    smoke: policies.SmokeVerdict,
    confidence: float,
) -> policies.Decision:
    """The decision with what the console draws: the smoke evidence, the pairs the bootstrap resampled and the
    confidence their bound was computed at."""
    extra: dict[str, object] = {"smoke": dict(smoke.evidence)} if candidate.probes else {}
    if against is not None:
        extra |= {
            "champion_mean": against.mean,
            "compared_with": against.version_id,
            # What the bootstrap resampled, kept so the console can draw the distribution behind the bound.
            "differences": paired_differences(candidate, against),
            "confidence": confidence,
        }
    if not extra:
        return decision
    return policies.Decision(
        decision.policy, decision.action, decision.at, decision.reasons, {**decision.evidence, **extra}
    )


def _logged(rt: Runtime, decision: policies.Decision) -> policies.Decision:
    rt.metrics.decision("promotion", str(decision.action))
    for reason in decision.reasons:
        log.info("promotion %s: %s [%s] %s", decision.action, reason.code, reason.kind, reason.message)
    return decision


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
