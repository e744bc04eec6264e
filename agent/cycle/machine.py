"""The fine-tuning cycle: OBSERVE → PLAN → TRAIN → VALIDATE → (CANARY) → PROMOTE → PROMOTED | REJECTED | HELD
(+ FAILED). CANARY runs only with an injected canary (the daemon's: live traffic judges the candidate first).

Every transition is committed (a compare-and-swap on state and owner) before the work of the next state starts,
so a killed process leaves the cycle in a well-defined state. On start-up, :meth:`CycleRunner.start` adopts an
interrupted cycle and returns it for :meth:`CycleRunner.resume` (training continues from its newest checkpoint),
or closes it as FAILED with the reason once it has been interrupted too often — never leaves it dangling. The
promotion itself closes the cycle in the same transaction as the champion CAS. A self-improvement round whose
safeguards refuse its samples (collapse, nothing verified) goes TRAIN → REJECTED with the reason, no candidate.

A cycle may train several candidates at once (``more`` in :meth:`CycleRunner.run`, see
:mod:`agent.cycle.parallel`): each has its own slot, work directory and version id, trains in a thread of its
own, and the injected selection gate judges all of them together and chooses at most one, which goes on to the
canary and the promotion as a single candidate would. A cycle with one candidate runs exactly as before.

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
from agent.cycle.parallel import SelectionGate, cycle_stopper, fan_out, verdict_evidence
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
    CandidateState,
    ChampionMovedError,
    ChampionPinnedError,
    ChampionState,
    Cycle,
    CycleCandidate,
    CycleState,
    NotFoundError,
    StaleCycleError,
    StaleEpochError,
    Store,
    VersionStateError,
)

__all__ = ["REPORT_FILE", "CycleRunner", "candidate_id_for", "candidate_workdir"]

log = logging.getLogger(__name__)

Event = Callable[[str, Mapping[str, Any]], None]
# Bakes a cycle's candidate on live traffic and answers "promote" or "abort" (may raise CycleInterrupted).
Canary = Callable[[Cycle], str]


_CANDIDATE_ID = re.compile(r"^c(\d{6,})(?:-\d+)?$")

# A finished cycle's report (agent/console writes it) outlives the cycle's work files: housekeeping keeps it.
REPORT_FILE = "report.html"


def candidate_id_for(cycle_id: int, slot: int = 1) -> str:
    """The version id a cycle's candidate gets (fixed, so a resumed cycle republishes under the same id):
    ``c000042`` for the first (the only one of most cycles), ``c000042-2``, ``c000042-3``, … for further candidates
    trained at once."""
    base = f"c{cycle_id:06d}"
    return base if slot == 1 else f"{base}-{slot}"


def candidate_workdir(cycle_workdir: Path, slot: int) -> Path:
    """Where a candidate trains: the cycle's work directory for the first, ``candidate-<slot>/`` inside it for the
    others (inside, so housekeeping keeps it while the cycle runs and clears it with the rest)."""
    return cycle_workdir if slot == 1 else cycle_workdir / f"candidate-{slot}"


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
        selector: judges the candidates of a cycle that trains several at once, with a correction for the
            multiple comparisons, and chooses at most one (needed only for such cycles).
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
        selector: SelectionGate | None = None,
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
        self.selector = selector

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
        self,
        *,
        trigger_reasons: Sequence[str],
        recipe: policies.Recipe,
        plan: CyclePlan | None = None,
        more: Sequence[tuple[policies.Recipe, CyclePlan]] = (),
    ) -> Cycle:
        """Runs one new cycle to its end and returns it (terminal, or non-terminal if interrupted).

        Args:
            recipe, plan: the cycle's candidate (the first, when there are several).
            more: further candidates trained at the same time (each one's recipe and plan, e.g. another trial of
                the learner); the cycle's plan then reserves the planned spend of all of them.

        Raises:
            CycleAlreadyRunningError: another cycle is not finished.
            ValueError: several candidates but no selector to judge them together.
        """
        plan = plan or CyclePlan()
        if more and self.selector is None:
            raise ValueError("a cycle with several candidates needs a selector (CycleRunner(selector=...))")
        cycle = self.store.cycles.begin(
            owner=self.owner,
            trigger_reasons=trigger_reasons,
            recipe=recipe.to_dict(),
            plan=plan.reserving([p for _, p in more]).to_dict(),
            backend=recipe.backend,
            candidates=[(r.to_dict(), p.to_dict()) for r, p in [(recipe, plan), *more]] if more else (),
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
                        for candidate in (workdir, *workdir.glob("candidate-*")):
                            prune_checkpoints(candidate)
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
        recipes = [(1, cycle.recipe)] + [(c.slot, c.recipe) for c in self.store.candidates.of_cycle(cycle.id)[1:]]
        for slot, recipe in recipes:
            workdir = candidate_workdir(self._workdir(cycle), slot)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "recipe.json").write_text(json.dumps(dict(recipe), sort_keys=True), encoding="utf-8")
        return self._advance(cycle, CycleState.TRAIN)

    def _train(self, cycle: Cycle) -> Cycle:
        candidates = self.store.candidates.of_cycle(cycle.id)
        if candidates:
            return self._train_all(cycle, candidates)
        try:
            version_id = self._train_candidate(cycle, 1, policies.Recipe.from_dict(cycle.recipe))
        except DataRefusedError as exc:  # a safeguard refused the data (collapse): a verdict, not a crash
            return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {exc}")
        return self._advance(cycle, CycleState.VALIDATE, candidate_id=version_id)

    def _train_candidate(self, cycle: Cycle, slot: int, recipe: policies.Recipe) -> str:
        """Trains and publishes one candidate unless it is published already; returns its version id.

        Raises:
            DataRefusedError: a self-improvement safeguard refused the data (recorded in the decision log).
        """
        version_id = candidate_id_for(cycle.id, slot)
        if self.store.versions.find(version_id) is None:
            workdir = candidate_workdir(self._workdir(cycle), slot)
            workdir.mkdir(parents=True, exist_ok=True)
            resume_from = latest_checkpoint(workdir)
            parent_dir = self._parent_dir(cycle)
            which = {"slot": slot} if slot > 1 else {}
            self._event(
                "train", {"cycle": cycle.id, **which, "resume_from": str(resume_from) if resume_from else None}
            )
            try:
                outcome = self.trainer.train(
                    recipe,
                    workdir,
                    resume_from=resume_from,
                    parent_dir=parent_dir,
                    progress=lambda step, ckpt: self._progress(cycle, step, ckpt),
                )
            except DataRefusedError as exc:
                self._record_self_improve(cycle, exc.metrics, stopped=str(exc))
                raise
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
        return version_id

    def _train_all(self, cycle: Cycle, candidates: list[CycleCandidate]) -> Cycle:
        """Trains the candidates not trained yet at once; each that fails is recorded and the others go on."""
        pending = [c for c in candidates if c.state is CandidateState.PLANNED]
        results = fan_out(
            pending,
            lambda c: self._train_candidate(cycle, c.slot, policies.Recipe.from_dict(c.recipe)),
            name=f"cycle-{cycle.id}-train",
        )
        stop = cycle_stopper(results)
        if isinstance(stop, StaleCycleError | StaleEpochError):
            raise stop  # not ours any more: write nothing
        for candidate, result in zip(pending, results, strict=True):
            if isinstance(result, str):
                self._candidate(cycle, candidate.slot, CandidateState.TRAINED, version_id=result)
            elif isinstance(result, DataRefusedError):  # a verdict on the recipe's data: it gained nothing, at a cost
                evidence = {"gain": 0.0, "sampling_cpu_s": float(result.metrics.get("si_sampling_cpu_s", 0.0))}
                self._candidate(cycle, candidate.slot, CandidateState.REJECTED, outcome=f"rejected: {result}",
                                evidence=evidence)
            elif not isinstance(result, CycleInterrupted):  # interrupted: still planned, trains on resume
                log.warning("cycle %s candidate %s failed to train: %s", cycle.id, candidate.slot, result)
                self._candidate(cycle, candidate.slot, CandidateState.FAILED,
                                outcome=f"training failed: {type(result).__name__}: {result}")
        if stop is not None:
            raise stop
        candidates = self.store.candidates.of_cycle(cycle.id)
        trained = [c for c in candidates if c.state is CandidateState.TRAINED]
        if not trained:
            failures = "; ".join(f"{c.slot}: {c.outcome}" for c in candidates)
            if all(c.state is CandidateState.REJECTED for c in candidates):  # every round's data was refused
                return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {failures}"[:3900])
            return self._advance(
                cycle, CycleState.FAILED, error=f"all {len(candidates)} candidates failed: {failures}"[:8000]
            )
        return self._advance(cycle, CycleState.VALIDATE, candidate_id=trained[0].version_id)

    def _candidate(self, cycle: Cycle, slot: int, state: CandidateState, **fields: Any) -> None:
        self.store.candidates.update(cycle.id, slot, owner=self.owner, state=state, **fields)
        self._event("candidate", {"cycle": cycle.id, "slot": slot, "state": str(state)})

    def _validate(self, cycle: Cycle) -> Cycle:
        candidates = self.store.candidates.of_cycle(cycle.id)
        if candidates:
            return self._validate_all(cycle, candidates)
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

    def _validate_all(self, cycle: Cycle, candidates: list[CycleCandidate]) -> Cycle:
        """Evaluates every trained candidate and the champion at once, lets the selector choose at most one, and
        rejects the others with its reasons."""
        assert self.selector is not None  # run() refuses several candidates without one
        loaded: list[tuple[CycleCandidate, Path]] = []
        for candidate in candidates:
            if candidate.state is CandidateState.FAILED or candidate.version_id is None:
                continue
            try:
                loaded.append((candidate, self.registry.load(candidate.version_id).path))
            except (ArtifactNotHereError, ArtifactCorruptError, ArtifactMissingError) as exc:
                self._candidate(cycle, candidate.slot, CandidateState.FAILED, outcome=f"artifact refused: {exc}")
        if not loaded:
            return self._unjudged(cycle)
        results = fan_out(
            [None, *loaded],
            lambda item: self._evaluate_champion() if item is None else self.trainer.evaluate(
                item[1], version_id=item[0].version_id or ""
            ),
            name=f"cycle-{cycle.id}-evaluate",
        )
        stop = cycle_stopper(results) or (results[0] if isinstance(results[0], BaseException) else None)
        if stop is not None:
            raise stop  # interrupted, not ours any more, or the champion could not be scored: as with one candidate
        champion, champ_eval = results[0]  # type: ignore[misc]
        judged: list[tuple[CycleCandidate, EvalOutcome]] = []
        for (candidate, _path), result in zip(loaded, results[1:], strict=True):
            if isinstance(result, EvalOutcome):
                judged.append((candidate, result))
            else:
                self._candidate(cycle, candidate.slot, CandidateState.FAILED,
                                outcome=f"evaluation failed: {type(result).__name__}: {result}")
        if not judged:
            return self._unjudged(cycle)
        selection = self.selector([e for _c, e in judged], champ_eval, self.store.clock.now())
        verdicts = {v.version: v for v in selection.verdicts}
        for candidate, cand_eval in judged:
            verdict = verdicts[cand_eval.version_id]
            self._record(cycle, verdict.decision, cand_eval, champ_eval)
            self.store.versions.update_metrics(
                cand_eval.version_id,
                {f"eval_{k}": v for k, v in cand_eval.metrics.items()} | {"eval_mean": cand_eval.mean},
            )
            gain = cand_eval.mean - (champ_eval.mean if champ_eval is not None else 0.0)  # what the learner is told
            evidence = {**verdict_evidence(verdict), "mean": cand_eval.mean, "gain": gain}
            summary = _summary(verdict.decision)
            if not verdict.chosen:
                self.store.versions.reject(cand_eval.version_id, reason=summary)
            state = CandidateState.CHOSEN if verdict.chosen else CandidateState.REJECTED
            self._candidate(cycle, candidate.slot, state, outcome=summary, evidence=evidence)
        self.store.decisions.record(
            "selection",
            str(selection.decision.action),
            reasons=[_reason_json(r) for r in selection.decision.reasons],
            evidence=json.loads(json.dumps(dict(selection.decision.evidence), default=str)),
            cycle_id=cycle.id,
        )
        action, summary = str(selection.decision.action), _summary(selection.decision)[:3900]  # a 4096-char column
        if action == "promote":
            after = CycleState.CANARY if self.canary is not None else CycleState.PROMOTE
            return self._advance(
                cycle, after, candidate_id=selection.winner, champion_epoch_seen=champion.epoch, outcome=summary
            )
        if action == "hold":
            return self._advance(
                cycle, CycleState.HELD, candidate_id=selection.winner, outcome=f"held for an operator: {summary}"
            )
        return self._advance(cycle, CycleState.REJECTED, outcome=f"rejected: {summary}")

    def _unjudged(self, cycle: Cycle) -> Cycle:
        why = "; ".join(f"{c.slot}: {c.outcome}" for c in self.store.candidates.of_cycle(cycle.id))
        return self._advance(cycle, CycleState.FAILED, error=f"no candidate could be judged: {why}"[:8000])

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
        references = int(m.get("si_replayed_reference", 0))
        reference = f", {references} of them reference solutions" if references else ""
        message = (f"{int(m['si_drawn'])} samples drawn, {int(m['si_verified'])} verified, {int(m['si_used'])} used "
                   f"(+{int(m.get('si_replayed', 0))} replayed{reference}) from {int(m['si_prompts'])} prompts "
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
