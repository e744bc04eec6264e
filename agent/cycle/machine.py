"""The fine-tuning cycle: OBSERVE → PLAN → TRAIN → VALIDATE → (CANARY) → PROMOTE → PROMOTED | REJECTED | HELD
(+ FAILED). CANARY runs only with an injected canary (the daemon's: live traffic judges the candidate first).

Every transition is committed (a compare-and-swap on state and owner) before the work of the next state starts,
so a killed process leaves the cycle in a well-defined state. On start-up, :meth:`CycleRunner.start` adopts an
interrupted cycle and returns it for :meth:`CycleRunner.resume` (training continues from its newest checkpoint),
or closes it as FAILED with the reason once it has been interrupted too often — never leaves it dangling. The
promotion itself closes the cycle in the same transaction as the champion CAS. A self-improvement round whose
safeguards refuse its samples (collapse, nothing verified) goes TRAIN → REJECTED with the reason, no candidate.

Call :meth:`start`, :meth:`run` and :meth:`housekeeping` only while holding the leader lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import policies
from agent.artifacts.layout import ArtifactCorruptError, ArtifactMissingError, ArtifactNotHereError
from agent.artifacts.registry import HousekeepingReport, Registry
from agent.cycle.plan import CyclePlan
from agent.cycle.trainer import (
    CycleInterrupted,
    DataRefusedError,
    DecisionLike,
    EvalOutcome,
    PromotionGate,
    Trainer,
    latest_checkpoint,
    prune_checkpoints,
)
from agent.store import (
    ChampionMovedError,
    ChampionPinnedError,
    ChampionState,
    Cycle,
    CycleState,
    NotFoundError,
    StaleCycleError,
    StaleEpochError,
    Store,
    VersionStateError,
)

__all__ = ["REPORT_FILE", "CycleRunner", "candidate_id_for"]

log = logging.getLogger(__name__)

Event = Callable[[str, Mapping[str, Any]], None]
# Bakes a cycle's candidate on live traffic and answers "promote" or "abort" (may raise CycleInterrupted).
Canary = Callable[[Cycle], str]


_CANDIDATE_ID = re.compile(r"^c(\d{6,})$")

# A finished cycle's report (agent/console writes it) outlives the cycle's work files: housekeeping keeps it.
REPORT_FILE = "report.html"


def candidate_id_for(cycle_id: int) -> str:
    """The version id a cycle's candidate gets (fixed, so a resumed cycle republishes under the same id)."""
    return f"c{cycle_id:06d}"


def _no_event(_name: str, _fields: Mapping[str, Any]) -> None:
    pass


def _reason_json(reason: Any) -> Any:
    to_dict = getattr(reason, "to_dict", None)
    return to_dict() if callable(to_dict) else str(reason)


class CycleRunner:
    """Drives cycles through the state machine.

    Args:
        registry: artifacts + store (the store is ``registry.store``).
        trainer: trains candidates and evaluates versions.
        gate: the promotion decision ``gate(candidate, champion, now)``.
        owner: this process's identity (e.g. ``"<replica>#<lease epoch>"``); unique per process lifetime.
        workdirs: where per-cycle working directories live (``<state_dir>/cycles``).
        max_resumes: an interrupted cycle is resumed at most this many times, then failed.
        keep_last: retention for housekeeping (newest versions kept besides every champion).
        on_event: called with ``(name, fields)`` at every transition and checkpoint (logging, metrics, tests).
        canary: judges a candidate that passed the gate on live traffic before it is promoted (None: no canary).
    """

    def __init__(
        self,
        registry: Registry,
        trainer: Trainer,
        gate: PromotionGate,
        *,
        owner: str,
        workdirs: Path,
        max_resumes: int = 3,
        keep_last: int = 5,
        on_event: Event | None = None,
        canary: Canary | None = None,
    ) -> None:
        self.registry = registry
        self.store: Store = registry.store
        self.trainer = trainer
        self.gate = gate
        self.owner = owner
        self.workdirs = workdirs
        self.max_resumes = max_resumes
        self.keep_last = keep_last
        self._event = on_event or _no_event
        self.canary = canary

    # -- entry points ------------------------------------------------------------------------------------------

    def start(self) -> Cycle | None:
        """Start-up repair: adopts or fails an interrupted cycle, re-points ``current`` at the champion, and
        removes temporaries. Returns the adopted cycle, to be passed to :meth:`resume`, or None."""
        adopted = self.recover()
        self.registry.reconcile()
        self.housekeeping(include_active=True)
        return adopted

    def recover(self) -> Cycle | None:
        """Adopts every non-terminal cycle (its owner is gone: we hold the lease now). One that was interrupted
        more than ``max_resumes`` times is closed as FAILED with the reason; otherwise it is returned."""
        adopted = None
        for cycle in self.store.cycles.non_terminal():
            mine = self.store.cycles.adopt(cycle.id, expected_owner=cycle.owner, owner=self.owner)
            self._event("adopted", {"cycle": mine.id, "state": str(mine.state), "resumes": mine.resumes})
            if mine.resumes > self.max_resumes:
                self.store.cycles.fail(
                    mine.id,
                    owner=self.owner,
                    error=f"interrupted {mine.resumes} times (last in state {mine.state}, previous owner "
                    f"{cycle.owner}); not resumed again",
                )
                self._event("failed", {"cycle": mine.id, "why": "too many resumes"})
            else:
                adopted = mine
        return adopted

    def run(
        self, *, trigger_reasons: Sequence[str], recipe: policies.Recipe, plan: CyclePlan | None = None
    ) -> Cycle:
        """Runs one new cycle to its end and returns it (terminal, or non-terminal if interrupted).

        Raises:
            CycleAlreadyRunningError: another cycle is not finished.
        """
        cycle = self.store.cycles.begin(
            owner=self.owner,
            trigger_reasons=trigger_reasons,
            recipe=recipe.to_dict(),
            plan=(plan or CyclePlan()).to_dict(),
            backend=recipe.backend,
        )
        self._event("begin", {"cycle": cycle.id})
        return self.resume(cycle)

    def resume(self, cycle: Cycle) -> Cycle:
        """Drives ``cycle`` (owned by us) from its committed state to a terminal one.

        Any error of a step closes the cycle as FAILED with the error text; :class:`CycleInterrupted` leaves it
        resumable; losing ownership (:class:`StaleCycleError`) stops working on it at once.
        """
        try:
            while not cycle.state.terminal:
                cycle = self._step(cycle)
        except CycleInterrupted as exc:
            self._event("interrupted", {"cycle": cycle.id, "state": str(cycle.state)})
            log.info("cycle %s interrupted in %s: %s", cycle.id, cycle.state, exc)
            return self.store.cycles.get(cycle.id)
        except StaleCycleError:
            log.warning("cycle %s was taken over by another owner; stopped working on it", cycle.id)
            return self.store.cycles.get(cycle.id)
        except StaleEpochError as exc:  # our lease term ended: the store refused the write; the next leader adopts
            log.warning("cycle %s: stopped, this process no longer leads: %s", cycle.id, exc)
            return self.store.cycles.get(cycle.id)
        except Exception as exc:  # a failed step fails the cycle, with its reason, and the daemon goes on
            log.exception("cycle %s failed in %s", cycle.id, cycle.state)
            try:
                cycle = self.store.cycles.fail(
                    cycle.id, owner=self.owner, error=f"{cycle.state}: {type(exc).__name__}: {exc}"
                )
            except (StaleCycleError, StaleEpochError):  # adopted meanwhile, or we lost the lease: not ours
                return self.store.cycles.get(cycle.id)
        self._event("end", {"cycle": cycle.id, "state": str(cycle.state)})
        return cycle

    def abort(self, cycle_id: int, *, reason: str) -> Cycle:
        """Closes a cycle as FAILED on an operator's request."""
        return self.store.cycles.fail(
            cycle_id, owner=self.store.cycles.get(cycle_id).owner or "", error=reason
        )

    def housekeeping(self, *, include_active: bool = False) -> HousekeepingReport:
        """Removes temporaries, work directories of finished cycles and old artifacts (see Registry).

        Safe to run while a cycle trains in another thread: what belongs to a non-terminal cycle (its work
        directory, its candidate's temporary or unregistered directory) is checked at deletion time and kept.

        Args:
            include_active: also clean the running cycle's interrupted writes (checkpoints, publication);
                only at start-up, when nothing is training.
        """
        report = self.registry.housekeeping(
            keep_last=self.keep_last, in_use=self.candidate_in_use, all_temporaries=include_active
        )
        if self.workdirs.is_dir():
            for workdir in self.workdirs.iterdir():
                if self._cycle_running(workdir.name):
                    if include_active:
                        prune_checkpoints(workdir)
                    continue
                _clear_finished(workdir)
        return report

    def _cycle_running(self, cycle_id: str) -> bool:
        if not cycle_id.isdigit():
            return False
        try:
            return not self.store.cycles.get(int(cycle_id)).state.terminal
        except NotFoundError:
            return False

    def candidate_in_use(self, version_id: str) -> bool:
        """True while ``version_id`` is the candidate of a non-terminal cycle (it may still be being published);
        pass it as ``in_use`` to :meth:`Registry.housekeeping`."""
        found = _CANDIDATE_ID.match(version_id)
        return found is not None and self._cycle_running(found.group(1))

    # -- the state machine -------------------------------------------------------------------------------------

    def _advance(self, cycle: Cycle, to: CycleState, **fields: Any) -> Cycle:
        moved = self.store.cycles.advance(
            cycle.id, from_state=cycle.state, to_state=to, owner=self.owner, **fields
        )
        self._event("state", {"cycle": cycle.id, "from": str(cycle.state), "to": str(to)})
        return moved

    def _step(self, cycle: Cycle) -> Cycle:
        handler = {
            CycleState.OBSERVE: self._observe,
            CycleState.PLAN: self._plan,
            CycleState.TRAIN: self._train,
            CycleState.VALIDATE: self._validate,
            CycleState.CANARY: self._canary,
            CycleState.PROMOTE: self._promote,
        }[cycle.state]
        return handler(cycle)

    def _workdir(self, cycle: Cycle) -> Path:
        return self.workdirs / str(cycle.id)

    def _observe(self, cycle: Cycle) -> Cycle:
        champion = self.store.champion.get()
        return self._advance(
            cycle, CycleState.PLAN, parent_id=champion.version_id, champion_epoch_seen=champion.epoch
        )

    def _plan(self, cycle: Cycle) -> Cycle:
        workdir = self._workdir(cycle)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "recipe.json").write_text(json.dumps(dict(cycle.recipe), sort_keys=True), encoding="utf-8")
        return self._advance(cycle, CycleState.TRAIN)

    def _train(self, cycle: Cycle) -> Cycle:
        version_id = candidate_id_for(cycle.id)
        if self.store.versions.find(version_id) is None:
            workdir = self._workdir(cycle)
            workdir.mkdir(parents=True, exist_ok=True)
            resume_from = latest_checkpoint(workdir)
            parent_dir = self._parent_dir(cycle)
            self._event(
                "train", {"cycle": cycle.id, "resume_from": str(resume_from) if resume_from else None}
            )
            try:
                outcome = self.trainer.train(
                    policies.Recipe.from_dict(cycle.recipe),
                    workdir,
                    resume_from=resume_from,
                    parent_dir=parent_dir,
                    progress=lambda step, ckpt: self._progress(cycle, step, ckpt),
                )
            except DataRefusedError as exc:  # a safeguard refused the data (collapse): a verdict, not a crash
                self._record_self_improve(cycle, exc.metrics, stopped=str(exc))
                return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {exc}")
            self.registry.publish_candidate(
                version_id,
                outcome.artifact_dir,
                base_fingerprint=outcome.base_fingerprint,
                adapter_kind=outcome.adapter_kind,
                adapter_config=outcome.adapter_config,
                parent_id=cycle.parent_id,
                metrics={**outcome.metrics, "steps": outcome.steps},
                cycle_id=cycle.id,
            )
            if "si_drawn" in outcome.metrics:
                self._record_self_improve(cycle, outcome.metrics)
            self._event("published", {"cycle": cycle.id, "version": version_id})
        return self._advance(cycle, CycleState.VALIDATE, candidate_id=version_id)

    def _validate(self, cycle: Cycle) -> Cycle:
        assert cycle.candidate_id is not None  # set by the TRAIN → VALIDATE transition
        try:
            candidate = self.registry.load(cycle.candidate_id)
        except ArtifactNotHereError as exc:  # published to another host's store: no verdict on the candidate
            return self._advance(cycle, CycleState.FAILED, error=f"candidate not on this host: {exc}")
        except (ArtifactCorruptError, ArtifactMissingError) as exc:
            return self._advance(cycle, CycleState.REJECTED, outcome=f"candidate artifact refused: {exc}")
        cand_eval = self.trainer.evaluate(candidate.path, version_id=cycle.candidate_id)
        champion, champ_eval = self._evaluate_champion()
        decision = self.gate(cand_eval, champ_eval, self.store.clock.now())
        action = str(decision.action)
        self._record(cycle, decision, cand_eval, champ_eval)
        self.store.versions.update_metrics(
            cycle.candidate_id,
            {f"eval_{k}": v for k, v in cand_eval.metrics.items()} | {"eval_mean": cand_eval.mean},
        )
        summary = _summary(decision)
        if action == "promote":
            after = CycleState.CANARY if self.canary is not None else CycleState.PROMOTE
            return self._advance(cycle, after, champion_epoch_seen=champion.epoch, outcome=summary)
        if action == "hold":
            return self._advance(cycle, CycleState.HELD, outcome=f"held for an operator: {summary}")
        self.store.versions.reject(cycle.candidate_id, reason=summary)
        return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {summary}")

    def _canary(self, cycle: Cycle) -> Cycle:
        assert cycle.candidate_id is not None and self.canary is not None
        verdict = self.canary(cycle)
        if verdict == "promote":
            return self._advance(cycle, CycleState.PROMOTE)
        reason = "canary aborted: worse than the champion on live traffic"
        self.store.versions.reject(cycle.candidate_id, reason=reason)
        return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {reason}")

    def _promote(self, cycle: Cycle) -> Cycle:
        assert cycle.candidate_id is not None and cycle.champion_epoch_seen is not None
        try:
            self.registry.promote(
                cycle.candidate_id,
                expected_epoch=cycle.champion_epoch_seen,
                actor=f"cycle {cycle.id}",
                reason=cycle.outcome or "promotion gate passed",
                automatic=True,
                cycle_id=cycle.id,
            )
        except ChampionMovedError as exc:
            return self._advance(
                cycle, CycleState.FAILED, error=f"champion moved since validation, comparison is stale: {exc}"
            )
        except ChampionPinnedError as exc:
            return self._advance(cycle, CycleState.REJECTED, outcome=f"not promoted: {exc}")
        except (ArtifactCorruptError, ArtifactMissingError, VersionStateError) as exc:
            return self._advance(cycle, CycleState.REJECTED, outcome=f"candidate refused at promotion: {exc}")
        self._event("promoted", {"cycle": cycle.id, "version": cycle.candidate_id})
        return self.store.cycles.get(cycle.id)

    # -- helpers -----------------------------------------------------------------------------------------------

    def _evaluate_champion(self) -> tuple[ChampionState, EvalOutcome | None]:
        champion = self.store.champion.get()
        if champion.version_id is None:
            return champion, None
        try:
            art = self.registry.load(champion.version_id)
        except (ArtifactCorruptError, ArtifactMissingError):
            # The champion's own artifact is unusable: serve the previous intact champion, compare with that.
            champion = self.registry.reconcile(actor="cycle validation")
            assert champion.version_id is not None
            art = self.registry.load(champion.version_id)
        return champion, self.trainer.evaluate(art.path, version_id=champion.version_id)

    def _parent_dir(self, cycle: Cycle) -> Path | None:
        if cycle.parent_id is None:
            return None
        try:
            return self.registry.load(cycle.parent_id).path
        except (ArtifactCorruptError, ArtifactMissingError):
            return None  # warm start is an optimisation; train from the base instead

    def _progress(self, cycle: Cycle, step: int, checkpoint: Path | None) -> None:
        if checkpoint is None:
            return
        self._event("checkpoint", {"cycle": cycle.id, "step": step})
        # Fencing: stop training at once if another process adopted this cycle meanwhile.
        if self.store.cycles.get(cycle.id).owner != self.owner:
            raise StaleCycleError(f"cycle {cycle.id} was adopted by another owner during training")

    def _record_self_improve(self, cycle: Cycle, metrics: Mapping[str, float], *, stopped: str | None = None) -> None:
        """The decision log's line for a self-improvement round: how many samples were drawn, verified, used (and
        why the round stopped, when its safeguards stopped it)."""
        m = {k: v for k, v in metrics.items() if k.startswith("si_")}
        message = (f"{int(m['si_drawn'])} samples drawn, {int(m['si_verified'])} verified, {int(m['si_used'])} used "
                   f"(+{int(m.get('si_replayed', 0))} replayed) from {int(m['si_prompts'])} prompts "
                   f"({int(m.get('si_pool_usage', 0))} usage log, {int(m.get('si_pool_inbox', 0))} inbox, "
                   f"{int(m.get('si_pool_generated', 0))} generated); "
                   f"pass@k {m['si_pass_at_k']:.2f}, distinct-3 {m['si_distinct3']:.2f}, "
                   f"sampling {m['si_sampling_cpu_s']:.0f} CPU-s")
        reasons = [{"code": "verified_samples", "kind": "fired" if stopped is None else "note", "message": message}]
        if stopped is not None:
            reasons.append({"code": "collapse", "kind": "suppressed", "message": stopped})
        self.store.decisions.record(
            "self-improve", "train" if stopped is None else "stop",
            reasons=reasons,
            evidence={k.removeprefix("si_"): v for k, v in m.items()},
            cycle_id=cycle.id,
        )

    def _record(
        self, cycle: Cycle, decision: DecisionLike, cand: EvalOutcome, champ: EvalOutcome | None
    ) -> None:
        evidence = dict(decision.evidence)
        evidence.setdefault("candidate_mean", cand.mean)
        if champ is not None:
            evidence.setdefault("champion_mean", champ.mean)
        self.store.decisions.record(
            "promotion",
            str(decision.action),
            reasons=[_reason_json(r) for r in decision.reasons],
            evidence=json.loads(json.dumps(evidence, default=str)),
            cycle_id=cycle.id,
        )


def _clear_finished(workdir: Path) -> None:
    """Removes a finished cycle's work files (checkpoints, recipe), keeping its report; errors are left for the
    next pass, as ``rmtree(ignore_errors=True)`` did."""
    with contextlib.suppress(OSError):
        if not workdir.is_dir() or workdir.is_symlink():
            workdir.unlink()
            return
        for entry in workdir.iterdir():
            if entry.name == REPORT_FILE and entry.is_file():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
        if not any(workdir.iterdir()):
            workdir.rmdir()


def _summary(decision: DecisionLike) -> str:
    parts = []
    for reason in decision.reasons:
        message = getattr(reason, "message", None)
        parts.append(str(message) if message is not None else str(reason))
    return "; ".join(parts) or str(decision.action)
