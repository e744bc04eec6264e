"""What ``qtha status``, ``versions``, ``history`` and ``decisions`` show: plain dicts read from the database.

The CLI reads the database directly, so it works whether the daemon runs or not. The daemon's own one-line
status (what it is doing right now) is also written to ``<state_dir>/daemon-status.json`` by
:func:`write_daemon_status`, atomically, each time it changes.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.store import Cycle, DecisionRecord, Lease, ModelVersion, Store

__all__ = [
    "STATUS_FILE",
    "cycle_dict",
    "decision_dict",
    "history",
    "read_daemon_status",
    "replica_dict",
    "standby_text",
    "status",
    "version_dict",
    "versions",
    "write_daemon_status",
]

STATUS_FILE = "daemon-status.json"
STOPPED = "stopped"

# What a standby does, said wherever its role is shown (status file, `qtha status`, console, systemd STATUS=).
STANDBY_DOES = (
    "runs no jobs and takes over, reading the champion and any unfinished cycle from the database, when the "
    "leader's lease expires or is released"
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def write_daemon_status(state_dir: Path, *, replica: str, text: str, leader: bool, at: datetime) -> None:
    """Replaces the status file atomically (a reader never sees half a file)."""
    payload = {"replica": replica, "pid": os.getpid(), "status": text, "leader": leader, "at": at.isoformat()}
    tmp = state_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, state_dir / STATUS_FILE)


def read_daemon_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def standby_text(replica: str, leader: Lease | None) -> str:
    """A standby's status line: that it is one, who leads at which epoch, and what it does meanwhile."""
    if leader is None or leader.holder is None:
        return f"standby: waiting for the leader lease as {replica}"
    return f"standby, idle by design: {leader.holder} leads (epoch {leader.epoch}); {replica} {STANDBY_DOES}"


def replica_dict(daemon: dict[str, Any] | None, lease: Lease, *, leader_alive: bool) -> dict[str, Any] | None:
    """The role of the daemon whose status file this state directory holds, from the lease in the database
    (not the file's own flag, which is written only when the status changes): leader, standby or stopped."""
    if daemon is None:
        return None
    name = daemon.get("replica")
    if daemon.get("status") == STOPPED:
        role = STOPPED
    elif leader_alive and lease.holder == name:
        role = "leader"
    else:
        role = "standby"
    return {
        "name": name,
        "role": role,
        "idle_by_design": role == "standby",
        "leader": lease.holder if leader_alive else None,
        "epoch": lease.epoch,
        "does": STANDBY_DOES if role == "standby" else None,
    }


def version_dict(version: ModelVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "status": str(version.status),
        "parent": version.parent_id,
        "adapter": version.adapter_kind,
        "adapter_config": dict(version.adapter_config),
        "metrics": dict(version.metrics),
        "sha256": version.sha256,
        "created_at": _iso(version.created_at),
        "cycle": version.cycle_id,
        "was_champion": version.was_champion,
        "pruned": version.pruned,
    }


def cycle_dict(cycle: Cycle) -> dict[str, Any]:
    return {
        "id": cycle.id,
        "state": str(cycle.state),
        "trigger_reasons": list(cycle.trigger_reasons),
        "recipe": dict(cycle.recipe),
        "plan": dict(cycle.plan),
        "backend": cycle.backend,
        "started_at": _iso(cycle.started_at),
        "updated_at": _iso(cycle.updated_at),
        "finished_at": _iso(cycle.finished_at),
        "outcome": cycle.outcome,
        "error": cycle.error,
        "owner": cycle.owner,
        "candidate": cycle.candidate_id,
        "resumes": cycle.resumes,
    }


def decision_dict(decision: DecisionRecord) -> dict[str, Any]:
    return {
        "id": decision.id,
        "kind": decision.kind,
        "action": decision.action,
        "reasons": list(decision.reasons),
        "evidence": dict(decision.evidence),
        "at": _iso(decision.at),
        "cycle": decision.cycle_id,
    }


def _training_progress(store: Store, cycle: Cycle) -> dict[str, Any] | None:
    samples = store.metrics.samples(
        "train_loss", since=cycle.started_at, labels={"cycle": str(cycle.id)}, limit=1
    )
    if not samples:
        return None
    last = samples[-1]
    return {
        "step": int(last.labels.get("step", 0)),
        "of": int(last.labels.get("of", 0)),
        "loss": last.value,
        "at": _iso(last.at),
    }


def status(store: Store, state_dir: Path) -> dict[str, Any]:
    """Everything an operator asks first: who serves, is something running, is anyone leading, what is queued."""
    champion = store.champion.get()
    lease = store.leases.get()
    active = store.cycles.active()
    recent = store.cycles.list(limit=1)
    last_finished = next((c for c in store.cycles.list(limit=5) if c.state.terminal), None)
    now = store.clock.now()
    leader_alive = lease.holder is not None and lease.expires_at is not None and lease.expires_at > now
    overrides = store.overrides.all()
    daemon = read_daemon_status(state_dir)
    current = None
    if active is not None:
        current = cycle_dict(active) | {"progress": _training_progress(store, active)}
    return {
        "champion": {
            "version": champion.version_id,
            "epoch": champion.epoch,
            "pinned": champion.pinned,
            "metrics": dict(store.versions.get(champion.version_id).metrics) if champion.version_id else {},
            "since": _iso(champion.updated_at),
        },
        "paused": bool(overrides.get("paused", False)),
        "cycle": current,
        "last_cycle": cycle_dict(last_finished) if last_finished else None,
        "cycles_total": recent[0].id if recent else 0,
        "leader": {
            "holder": lease.holder if leader_alive else None,
            "epoch": lease.epoch,
            "expires_at": _iso(lease.expires_at) if leader_alive else None,
        },
        "daemon": daemon,
        "replica": replica_dict(daemon, lease, leader_alive=leader_alive),
        "pending_commands": [
            {"key": c.key, "kind": c.kind, "args": dict(c.args), "actor": c.actor, "at": _iso(c.created_at)}
            for c in store.commands.pending()
        ],
        "policy_overrides": {k: v for k, v in overrides.items() if k.startswith("policy.")},
        "database": store.backend,
    }


def versions(store: Store) -> list[dict[str, Any]]:
    return [version_dict(v) for v in store.versions.list()]


def history(store: Store, *, limit: int = 20) -> dict[str, Any]:
    return {
        "cycles": [cycle_dict(c) for c in store.cycles.list(limit=limit)],
        "serving": [
            {
                "version": s.version_id,
                "epoch": s.epoch,
                "from": _iso(s.served_from),
                "until": _iso(s.served_until),
                "moved_by": s.moved_by,
                "reason": s.reason,
            }
            for s in store.audit.serving_history()
        ],
    }
