"""Several candidates in one cycle: running their work at once, and what the cycle needs from a selection gate.

A cycle that trains N candidates (``[cluster] parallel_candidates``) runs each candidate's training, and then each
evaluation, in a thread of its own that calls the injected trainer as a single-candidate cycle would; the trainer
stays a per-task wrapper (with Ray, one task per call, so N calls at once become N tasks on the cluster's nodes).
Threads, not processes: the work is elsewhere (a child process or a Ray task) and the thread only waits for it.

One candidate's failure is that candidate's: the others go on and the cycle judges those that trained. What
concerns the whole cycle — a stop request (:class:`~agent.cycle.trainer.CycleInterrupted`) or the cycle or lease
lost to another process — is raised once every thread has ended, so no thread is left writing for a cycle that
was given up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from agent.cycle.trainer import CycleInterrupted, DecisionLike, EvalOutcome
from agent.store import StaleCycleError, StaleEpochError

__all__ = ["SelectionGate", "SelectionLike", "VerdictLike", "cycle_stopper", "fan_out", "verdict_evidence"]

T = TypeVar("T")
R = TypeVar("R")

# What stops the whole cycle rather than one candidate, most serious first: the cycle or the lease is lost (stop
# at once, write nothing more), or a stop was requested (the cycle stays resumable).
_STOPPERS: tuple[type[BaseException], ...] = (StaleEpochError, StaleCycleError, CycleInterrupted)


def fan_out(items: Sequence[T], work: Callable[[T], R], *, name: str) -> list[R | BaseException]:
    """Runs ``work(item)`` for every item at once, one thread each, and waits for all of them.

    Returns:
        Each item's result, or the exception it raised, in the order of ``items``. One item is run in the calling
        thread (no thread for nothing).
    """
    if len(items) == 1:
        return [_attempt(work, items[0])]
    results: list[R | BaseException] = [RuntimeError("not run")] * len(items)

    def run(index: int) -> None:
        results[index] = _attempt(work, items[index])

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i + 1}") for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _attempt(work: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return work(item)
    except Exception as exc:  # returned to the caller, which decides per kind (see cycle_stopper)
        return exc


def cycle_stopper(outcomes: Sequence[object]) -> BaseException | None:
    """The exception among ``outcomes`` that ends the cycle's step for every candidate, most serious first."""
    for kind in _STOPPERS:
        found = next((o for o in outcomes if isinstance(o, kind)), None)
        if found is not None:
            return found
    return None


class VerdictLike(Protocol):
    """One candidate's part in a selection (``policies.CandidateVerdict`` fits)."""

    @property
    def version(self) -> str: ...

    @property
    def decision(self) -> DecisionLike: ...

    @property
    def chosen(self) -> bool: ...


class SelectionLike(Protocol):
    """What a selection gate returns (``policies.Selection`` fits): the selection decision for the log, one verdict
    per candidate, and the chosen candidate (promoted or held) if any."""

    @property
    def decision(self) -> DecisionLike: ...

    @property
    def verdicts(self) -> Sequence[VerdictLike]: ...

    @property
    def winner(self) -> str | None: ...


SelectionGate = Callable[[Sequence[EvalOutcome], EvalOutcome | None, datetime], SelectionLike]
"""``select(candidates, champion_or_None, now)``: judges every candidate against the champion with a correction for
the multiple comparisons and chooses at most one (:func:`policies.select_candidate` in the daemon)."""


def verdict_evidence(verdict: VerdictLike) -> Mapping[str, object]:
    """The numbers of a verdict worth keeping on the candidate's row (what the console and the learner read)."""
    evidence = verdict.decision.evidence
    keep = ("candidate_mean", "champion_mean", "mean_gain", "lcb", "correction")
    return {k: evidence[k] for k in keep if k in evidence}
