"""Operator commands: the CLI queues them as rows (with an idempotency key); the leader applies them here.

Every override goes through this path, so it is applied by exactly one process, once, in order, and audited
(``Commands.mark_applied`` writes the audit entry) — whether the daemon was running when the operator typed it or
started later. A command that cannot be applied is *refused* (``ok = False``) with a reason the CLI prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent.artifacts.layout import ArtifactCorruptError, ArtifactMissingError
from agent.config import ConfigError
from agent.daemon.planner import RecipeOverrideError, check_override
from agent.daemon.policy_inputs import OVERRIDE_PREFIX, parse_policy_value
from agent.daemon.runtime import Runtime
from agent.store import (
    ChampionMovedError,
    ChampionPinnedError,
    NotFoundError,
    OperatorCommand,
    VersionStateError,
)

__all__ = ["KINDS", "RUN_NOW_KEY", "CommandRefused", "apply_pending", "validate_args"]

log = logging.getLogger("qtha.commands")

RUN_NOW_KEY = "run_now"  # the override that carries a pending `cycle --now` to the trigger


class CommandRefused(Exception):  # noqa: N818 (an outcome, reported to the operator, not a crash)
    """The command is valid but cannot be applied now; the message says why and what to do."""


def _pause(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    rt.store.overrides.set("paused", True, actor=actor, reason="operator pause")
    rt.metrics.set_paused(True)
    return "paused: no new cycles start until `qtha resume` (a running cycle finishes)"


def _resume(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    rt.store.overrides.clear("paused", actor=actor, reason="operator resume")
    rt.metrics.set_paused(False)
    # No immediate trigger here: a `cycle --now` queued right behind this resume must be seen by the same
    # trigger decision (the next consider tick comes within scheduler.consider_interval_s).
    return "resumed"


def _cycle(rt: Runtime, args: Mapping[str, Any], actor: str, *, key: str) -> str:
    if rt.paused():
        raise CommandRefused("the agent is paused; `qtha resume` first (a paused agent never starts a cycle)")
    recipe = dict(args.get("recipe") or {})
    try:  # the CLI checked it, but a row may come from an older CLI; the operator hears of it (`--wait`: exit 3)
        check_override(rt.config, recipe)
    except RecipeOverrideError as exc:
        raise CommandRefused(str(exc)) from None
    # The planner checks it again against the learner's proposal, and refuses (audited) what does not fit there.
    rt.store.overrides.set(RUN_NOW_KEY, {"key": key, "recipe": recipe}, actor=actor, reason="cycle --now")
    rt.run_soon("consider")
    return "cycle requested: the trigger policy runs now (cooldown and quiet hours are overridden)"


def _promote(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    version = str(args["version"])
    state = rt.registry.promote(
        version,
        expected_epoch=rt.store.champion.get().epoch,
        actor=actor,
        reason=str(args.get("reason") or "operator promote"),
    )
    rt.metrics.promoted()
    rt.metrics.set_champion(state.version_id, _metrics_of(rt, state.version_id))
    return f"{version} is champion (epoch {state.epoch})"


def _rollback(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    before = rt.store.champion.get().version_id
    state = rt.registry.rollback(actor=actor, reason=str(args.get("reason") or "operator rollback"))
    rt.metrics.rolled_back()
    rt.metrics.set_champion(state.version_id, _metrics_of(rt, state.version_id))
    return f"rolled back from {before} to {state.version_id} (epoch {state.epoch})"


def _pin(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    version = args.get("version")
    state = rt.registry.pin(version, actor=actor, reason="operator pin")
    rt.metrics.set_champion(state.version_id, _metrics_of(rt, state.version_id))
    return f"pinned {state.version_id}: automatic promotions and rollbacks are refused until `qtha unpin`"


def _unpin(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    rt.registry.unpin(actor=actor, reason="operator unpin")
    return "unpinned"


def _policy_set(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    key, raw = str(args["key"]), str(args["value"])
    try:
        value = parse_policy_value(rt.policy(), key, raw)
    except ConfigError as exc:
        raise CommandRefused(str(exc)) from None
    rt.store.overrides.set(OVERRIDE_PREFIX + key, value, actor=actor, reason=f"policy set {key}={raw}")
    return f"policy {key} = {value!r}"


def _policy_unset(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    key = str(args["key"])
    removed = rt.store.overrides.clear(OVERRIDE_PREFIX + key, actor=actor, reason=f"policy unset {key}")
    return f"policy {key} back to the config file's value" if removed else f"policy {key} was not overridden"


def _eval(rt: Runtime, args: Mapping[str, Any], actor: str) -> str:
    version = str(args["version"])
    rt.store.versions.get(version)  # NotFoundError → refused with the store's message
    if rt.schedule_evaluation is None:
        raise CommandRefused("no scheduler to run the evaluation on")
    rt.schedule_evaluation(version, f"operator eval by {actor}")
    return f"evaluation of {version} scheduled"


_HANDLERS: dict[str, Callable[[Runtime, Mapping[str, Any], str], str]] = {
    "pause": _pause,
    "resume": _resume,
    "promote": _promote,
    "rollback": _rollback,
    "pin": _pin,
    "unpin": _unpin,
    "policy_set": _policy_set,
    "policy_unset": _policy_unset,
    "eval": _eval,
}
KINDS = (*_HANDLERS, "cycle")
_REQUIRED = {
    "promote": ("version",),
    "eval": ("version",),
    "policy_set": ("key", "value"),
    "policy_unset": ("key",),
}


def validate_args(kind: str, args: Mapping[str, Any]) -> None:
    """Checks a command before it is queued (the CLI) and before it is applied (the daemon).

    Raises:
        ValueError: unknown kind or a missing argument.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown command {kind!r}; known: {', '.join(sorted(KINDS))}")
    missing = [name for name in _REQUIRED.get(kind, ()) if args.get(name) in (None, "")]
    if missing:
        raise ValueError(f"command {kind} needs {', '.join(missing)}")


def _metrics_of(rt: Runtime, version_id: str | None) -> dict[str, float]:
    if version_id is None:
        return {}
    return rt.store.versions.get(version_id).numeric_metrics()


def apply_one(rt: Runtime, command: OperatorCommand) -> OperatorCommand:
    """Applies one command and records the outcome (exactly once; audited by the store)."""
    actor = f"operator {command.actor}"
    try:
        validate_args(command.kind, command.args)
        if command.kind == "cycle":
            result = _cycle(rt, command.args, actor, key=command.key)
        else:
            result = _HANDLERS[command.kind](rt, command.args, actor)
        ok = True
    except (
        CommandRefused,
        ValueError,
        NotFoundError,
        VersionStateError,
        ChampionMovedError,
        ChampionPinnedError,
        ArtifactCorruptError,
        ArtifactMissingError,
    ) as exc:
        ok, result = False, str(exc)
    log.info(
        "command %s %s (%s): %s: %s",
        command.kind,
        dict(command.args),
        command.key,
        "ok" if ok else "refused",
        result,
    )
    return rt.store.commands.mark_applied(command.id, ok=ok, result=result, actor=rt.replica)


def apply_pending(rt: Runtime) -> list[OperatorCommand]:
    """Applies every queued command, oldest first; stops early when the daemon is stopping or not leader."""
    applied = []
    with rt.commands_lock:
        for command in rt.store.commands.pending():
            if rt.stopping.is_set() or not rt.leadership.is_leader():
                break
            applied.append(apply_one(rt, command))
    return applied
