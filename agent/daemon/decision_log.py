"""What the daemon records as it goes: every policy decision (to the store for ``qtha decisions`` and to the log)
and every cycle event (to the log, the status line and the cycle gauges)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import policies
from agent.daemon.runtime import Runtime
from agent.store import CycleState

__all__ = ["cycle_event_logger", "record_decision"]

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


def cycle_event_logger(rt: Runtime) -> Callable[[str, Mapping[str, Any]], None]:
    """The ``on_event`` of a :class:`~agent.cycle.machine.CycleRunner`: log, gauges and status line."""

    def on_event(name: str, fields: Mapping[str, Any]) -> None:
        log.info("cycle event %s %s", name, dict(fields))
        if name == "begin":
            rt.metrics.cycle_started()
        elif name == "state":
            rt.set_status(f"cycle {fields['cycle']}: {fields['from']} → {fields['to']}")
            _track_step(rt, fields["cycle"], str(fields["to"]))
        elif name in ("end", "interrupted"):
            rt.liveness.step_finished("cycle")
        elif name == "checkpoint":
            rt.set_status(f"cycle {fields['cycle']}: training, checkpoint at step {fields['step']}")

    return on_event


def _track_step(rt: Runtime, cycle_id: object, state: str) -> None:
    """Gives the watchdog the deadline of the step a cycle just entered (training may take train_timeout_s, then
    stop_timeout_s to checkpoint; any other step daemon.step_limit_s)."""
    daemon = rt.config.daemon
    if CycleState(state).terminal:
        rt.liveness.step_finished("cycle")
        return
    limit = daemon.step_limit_s
    if state == CycleState.TRAIN:
        limit = daemon.train_timeout_s + daemon.stop_timeout_s
    elif state == CycleState.CANARY:  # bakes on live traffic for up to (1 + extensions) bake periods
        live = rt.config.live
        limit += live.canary_bake_s * (1 + live.canary_max_extensions)
    rt.liveness.step_started("cycle", limit_s=limit, what=f"cycle {cycle_id} step {state}")
