"""Every policy decision goes to the store (``qtha decisions``), the log and the decision counter, the same way."""

from __future__ import annotations

import logging

import policies
from agent.daemon.runtime import Runtime

__all__ = ["record_decision"]

log = logging.getLogger("qtha.cycle")


def record_decision(rt: Runtime, decision: policies.Decision, *, cycle_id: int | None = None) -> None:
    """Stores ``decision`` with its reasons and evidence and logs one line per reason."""
    rt.store.decisions.record(
        decision.policy,
        str(decision.action),
        reasons=[r.to_dict() for r in decision.reasons],  # type: ignore[misc]  # a JSON column
        evidence=decision.to_dict()["evidence"],
        cycle_id=cycle_id,
    )
    for reason in decision.reasons:
        log.info("%s %s: %s [%s] %s", decision.policy, decision.action, reason.code, reason.kind, reason.message)
