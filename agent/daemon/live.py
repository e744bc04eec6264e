"""Live signals from serving: what each version did on real traffic, read from the server's usage log and feedback.

* :func:`live_stats` counts, for one version and period: requests, errors (non-200), answers that are empty or
  degenerate repetition (:func:`policies.is_degenerate`), latency, answers checked against a known correct answer
  (feedback's ``correct_answer``; maths: the final integer, :func:`policies.final_integer`) and feedback scores.
* :func:`observe_live` (a scheduled job) records them as the documented ``live_*`` series per ``version`` for the
  champion and a running canary; the drift detector reads them when ``policy.drift_metric`` names one, and the
  same numbers decide the canary (:mod:`agent.daemon.canary`) and rollback after a promotion
  (:func:`maybe_roll_back_live`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import policies
from agent.daemon.decision_log import record_decision
from agent.daemon.runtime import Runtime
from agent.store import AuditKind, Store, StoreError

__all__ = ["CANARY_KEY", "SKIP_KEY", "live_config", "live_stats", "maybe_roll_back_live", "observe_live"]

log = logging.getLogger("qtha.live")

# The operator-override row naming the running canary: {"version", "share", "since", "cycle", "extensions"}.
# ``qtha serve`` reads it on every poll and sends ``share`` of new requests to ``version``.
CANARY_KEY = "canary"
SKIP_KEY = "canary.skip"  # set by `qtha promote --now`: end the running canary (or skip the next) with a promotion


def live_config(rt: Runtime) -> policies.LiveConfig:
    live = rt.config.live
    return policies.LiveConfig(
        min_samples=live.min_samples, margin=live.margin, confidence=live.confidence, latency_ratio=live.latency_ratio
    )


def _checks_out(answer: str, correct: str, task: str) -> bool:
    if task == "maths":
        expected = policies.final_integer(correct)
        return expected is not None and policies.final_integer(answer) == expected
    return answer.strip().casefold() == correct.strip().casefold()


def live_stats(
    store: Store, version: str, *, since: datetime, until: datetime | None = None, task: str = "maths"
) -> policies.LiveStats:
    """What ``version`` did on live traffic in ``[since, until)`` (see the module docstring)."""
    records = [r for r in store.usage.list(version_id=version, since=since) if until is None or r.at < until]
    answers: dict[str, str] = {}
    errors = answered = degenerate = 0
    latency = 0.0
    for record in records:
        if record.status != 200:
            errors += 1
            continue
        answered += 1
        latency += record.latency_s
        text = record.answers[0] if record.answers else ""
        if not record.answers and record.completion_tokens > 0:
            continue  # logged without content (serve.usage_content = false): nothing to judge
        answers[record.request_id] = text
        if not text.strip() or policies.is_degenerate(text):
            degenerate += 1
    checked = verified = feedback_n = 0
    feedback_sum = feedback_sq = 0.0
    for given in store.usage.feedback(version_id=version, since=since):
        if until is not None and given.at >= until:
            continue
        if given.score is not None:
            feedback_n += 1
            feedback_sum += given.score
            feedback_sq += given.score * given.score
        if given.correct_answer is not None and given.request_id in answers:
            checked += 1
            verified += _checks_out(answers[given.request_id], given.correct_answer, task)
    return policies.LiveStats(
        version=version,
        requests=len(records),
        errors=errors,
        answered=answered,
        degenerate=degenerate,
        latency_sum_s=latency,
        checked=checked,
        verified=verified,
        feedback_n=feedback_n,
        feedback_sum=feedback_sum,
        feedback_sq=feedback_sq,
    )


def observe_live(rt: Runtime) -> None:
    """Records the ``live_*`` series of the champion and a running canary over the last ``live.window_s``."""
    now = rt.clock.now()
    since = now - timedelta(seconds=rt.config.live.window_s)
    champion = rt.store.champion.get().version_id or "base"
    canary = rt.store.overrides.get(CANARY_KEY)
    versions = [champion] + ([str(canary["version"])] if canary else [])
    for version in versions:
        stats = live_stats(rt.store, version, since=since, task=rt.config.data.task)
        if stats.requests == 0:
            continue
        rows = [(name, value, {"version": version}) for name, value in stats.rates().items() if value is not None]
        rt.store.metrics.record_many(rows, source="daemon", at=now)
    if champion != "base":
        maybe_roll_back_live(rt, champion)


def maybe_roll_back_live(rt: Runtime, champion: str) -> None:
    """Rolls back a recent promotion (within ``policy.rollback_bake_h``) whose live signals are significantly worse
    than its predecessor's were over the six live windows before it, or whose last three live windows are
    significantly worse than its own record since the promotion before them (a version that degrades after a
    good start). Recorded as a ``rollback`` decision with both sides' counts, audited."""
    serving = rt.store.audit.serving_history()
    if len(serving) < 2 or serving[-1].version_id != champion:
        return
    previous = serving[-2]
    promoted_at = serving[-1].served_from
    now = rt.clock.now()
    window = timedelta(seconds=rt.config.live.window_s)
    task = rt.config.data.task
    bake = timedelta(hours=rt.policy().rollback_bake_h)

    def judge(current: policies.LiveStats, baseline: policies.LiveStats) -> policies.Decision:
        return policies.decide_live_rollback(
            current, baseline, now, promoted_at=promoted_at, bake=bake, config=live_config(rt)
        )

    decision = judge(
        live_stats(rt.store, champion, since=promoted_at, task=task),
        live_stats(rt.store, previous.version_id, since=promoted_at - 6 * window, until=promoted_at, task=task),
    )
    recent = now - 3 * window
    if decision.action is not policies.Action.ROLLBACK and recent > promoted_at:
        decision = judge(
            live_stats(rt.store, champion, since=recent, task=task),
            live_stats(rt.store, champion, since=promoted_at, until=recent, task=task),
        )
    rt.metrics.decision("rollback", str(decision.action))
    if decision.action is not policies.Action.ROLLBACK:
        return
    record_decision(rt, decision)
    if not rt.policy().auto_rollback:
        rt.store.audit.note(
            AuditKind.OVERRIDE, actor="rollback policy", reason="live rollback advised but policy.auto_rollback is false"
        )
        return
    try:
        state = rt.registry.rollback(actor="rollback policy", reason="live signals degraded", automatic=True)
    except StoreError as exc:  # pinned, moved, or nothing to return to: recorded, the champion keeps serving
        log.warning("automatic rollback refused: %s", exc)
        return
    rt.metrics.rolled_back()
    rt.metrics.set_champion(state.version_id, {})
    log.warning("rolled back %s → %s on live signals", champion, state.version_id)
