"""The canary: a candidate that passed the offline gate serves ``live.canary_share`` of live traffic for a bake
period, then is promoted, extended or aborted on the live signals (:func:`policies.decide_canary`).

The running canary is the operator-override row ``canary`` (:data:`agent.daemon.live.CANARY_KEY`, audited like
every override): ``qtha serve`` reads it and routes the share to the candidate. The row keeps when the canary
started and how often it was extended, so a daemon restarted mid-bake resumes the same canary. Every step is a
recorded ``canary`` decision with its evidence (both versions' live counts). ``qtha promote --now`` ends a running
canary at once with a promotion (``canary.skip``); ``live.canary_share = 0`` disables it; with no live traffic
recently (``live.canary_needs_traffic_s``) there is nothing to judge it on and the offline gate stands.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import policies
from agent.cycle.trainer import CycleInterrupted
from agent.daemon.decision_log import record_decision
from agent.daemon.live import CANARY_KEY, SKIP_KEY, live_config, live_stats
from agent.daemon.runtime import Runtime
from agent.store import Cycle

__all__ = ["run_canary"]

log = logging.getLogger("qtha.canary")



def _note(
    rt: Runtime, cycle: Cycle, action: policies.Action, code: str, message: str, evidence: dict[str, Any] | None = None
) -> None:
    now = rt.clock.now()
    reason = policies.Reason(code, policies.ReasonKind.FIRED, message)
    record_decision(rt, policies.Decision("canary", action, now, (reason,), evidence or {}), cycle_id=cycle.id)


def run_canary(rt: Runtime, cycle: Cycle) -> str:
    """Bakes ``cycle``'s candidate as a canary (blocking, polling every ``live.canary_poll_s``); returns
    ``"promote"`` or ``"abort"``.

    Raises:
        CycleInterrupted: the daemon is stopping; the canary row stays and the resumed cycle continues it.
    """
    assert cycle.candidate_id is not None
    cfg = rt.config.live
    candidate, champion = cycle.candidate_id, rt.store.champion.get().version_id or "base"
    row = rt.store.overrides.get(CANARY_KEY)
    if row is None or row.get("version") != candidate:
        if rt.store.overrides.get(SKIP_KEY):
            rt.store.overrides.clear(SKIP_KEY, actor="canary", reason="consumed: promote --now")
            _note(rt, cycle, policies.Action.PROMOTE, "canary_skipped", "qtha promote --now: no canary")
            return "promote"
        if cfg.canary_share <= 0:
            _note(rt, cycle, policies.Action.PROMOTE, "canary_disabled", "live.canary_share = 0: no canary")
            return "promote"
        recent = rt.store.usage.list(since=rt.clock.now() - timedelta(seconds=cfg.canary_needs_traffic_s), limit=1)
        if not recent:
            _note(
                rt, cycle, policies.Action.PROMOTE, "no_live_traffic",
                f"no request served in the last {cfg.canary_needs_traffic_s:.0f} s: nothing to judge a canary on; "
                "the offline gate stands",
            )
            return "promote"
        row = {
            "version": candidate,
            "champion": champion,
            "share": cfg.canary_share,
            "since": rt.clock.now().isoformat(),
            "cycle": cycle.id,
            "extensions": 0,
        }
        rt.store.overrides.set(CANARY_KEY, row, actor="canary", reason=f"cycle {cycle.id}: canary of {candidate}")
        _note(
            rt, cycle, policies.Action.WAIT, "canary_started",
            f"{candidate} serves {cfg.canary_share:.0%} of live traffic for {cfg.canary_bake_s:.0f} s against {champion}",
            row,
        )
        rt.set_status(f"cycle {cycle.id}: canary {candidate} at {cfg.canary_share:.0%} of traffic")
    started = datetime.fromisoformat(row["since"])
    while True:
        if rt.store.overrides.get(SKIP_KEY):
            rt.store.overrides.clear(SKIP_KEY, actor="canary", reason="consumed: promote --now")
            _end(rt, cycle, "promote --now")
            _note(rt, cycle, policies.Action.PROMOTE, "canary_skipped", "qtha promote --now ended the canary")
            return "promote"
        now = rt.clock.now()
        task = rt.config.data.task
        decision = policies.decide_canary(
            live_stats(rt.store, candidate, since=started, task=task),
            live_stats(rt.store, str(row.get("champion", champion)), since=started, task=task),
            now,
            started_at=started,
            bake=timedelta(seconds=cfg.canary_bake_s),
            extensions=int(row.get("extensions", 0)),
            max_extensions=cfg.canary_max_extensions,
            config=live_config(rt),
        )
        rt.metrics.decision("canary", str(decision.action))
        if decision.action is policies.Action.EXTEND:
            record_decision(rt, decision, cycle_id=cycle.id)
            row = {**row, "extensions": int(row.get("extensions", 0)) + 1}
            rt.store.overrides.set(CANARY_KEY, row, actor="canary", reason=f"canary of {candidate} extended")
            continue
        if decision.action in (policies.Action.PROMOTE, policies.Action.ABORT):
            record_decision(rt, decision, cycle_id=cycle.id)
            _end(rt, cycle, str(decision.action))
            return "promote" if decision.action is policies.Action.PROMOTE else "abort"
        if rt.stopping.wait(cfg.canary_poll_s):
            raise CycleInterrupted(f"stopping during the canary of {candidate}; it resumes on the next start")


def _end(rt: Runtime, cycle: Cycle, why: str) -> None:
    rt.store.overrides.clear(CANARY_KEY, actor="canary", reason=f"cycle {cycle.id}: canary ended ({why})")
