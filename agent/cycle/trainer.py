"""What a cycle needs from training and evaluation: the :class:`Trainer` protocol and its records.

The cycle (:mod:`agent.cycle.machine`) does not know how a model is trained. A trainer trains in a per-cycle working
directory, writes step checkpoints there (:func:`save_checkpoint` makes them atomic), resumes from one after a
crash, and writes the candidate's files into a directory that the registry then publishes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import policies
from agent.files import fsync_path

__all__ = [
    "CHECKPOINTS",
    "CycleInterrupted",
    "DataRefusedError",
    "EvalOutcome",
    "GateDecision",
    "NullObserver",
    "Progress",
    "PromotionGate",
    "DecisionLike",
    "TrainOutcome",
    "TrainingObserver",
    "Trainer",
    "checkpoint_step",
    "latest_checkpoint",
    "parallel_slots",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CycleInterrupted(Exception):  # noqa: N818 — it is a signal to stop, not an error
    """Raised by a trainer that stopped on request after writing a checkpoint; the cycle stays resumable."""


class DataRefusedError(RuntimeError):
    """Training refused its data before it started: a self-improvement round stopped by its safeguards (collapse,
    nothing verified). ``metrics`` holds the round's numbers (``si_drawn``, ``si_verified``, ``si_used``, …) for
    the decision log; the message is the reason. The cycle ends REJECTED with it (a verdict on the recipe's data,
    not a crash: the breaker does not count it)."""

    def __init__(self, reason: str, metrics: Mapping[str, float]) -> None:
        super().__init__(reason)
        self.metrics = dict(metrics)


@dataclass(frozen=True)
class TrainOutcome:
    """What training produced.

    Attributes:
        artifact_dir: a directory with the candidate's files (published as ``versions/<id>/``).
        steps: optimizer steps done in total (including those before a resume).
        metrics: training metrics (final loss, skipped non-finite steps, …).
        base_fingerprint: identifies the frozen base model the adapter belongs to.
        adapter_kind: ``qtha``, ``lora``, ….
        adapter_config: the adapter's hyperparameters.
    """

    artifact_dir: Path
    steps: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    base_fingerprint: str = ""
    adapter_kind: str = ""
    adapter_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalOutcome:
    """A version's results on the held-out set (the same example ids for every version).

    Attributes:
        version_id: the evaluated version.
        scores: example id → score, higher is better (negate losses).
        metrics: aggregate metrics (accuracy, loss, …).
        probes: the smoke test's answers on the fixed probe set (none: the trainer has no smoke test).
    """

    version_id: str
    scores: Mapping[str, float]
    metrics: Mapping[str, float] = field(default_factory=dict)
    probes: tuple[policies.ProbeResult, ...] = ()

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores) if self.scores else float("nan")


Progress = Callable[[int, Path | None], None]
"""Called by a trainer after each step with the step number and the checkpoint just written (or None)."""


class TrainingObserver(Protocol):
    """Where a trainer reports what happens while it works (the daemon's: database samples, Prometheus metrics and
    the status line; tests pass their own). Injected, so trainers know nothing of the store or the metrics."""

    def training_step(self, cycle: str, *, step: int, total: int, loss: float, new_steps: int,
                      new_nonfinite: int) -> None:
        """One optimizer step finished; ``new_*`` count what was not reported before (a resumed run repeats)."""

    def circuits_run(self, backend: str, *, circuits: int, shots: int, errors: Mapping[str, int]) -> None:
        """Circuits ran on ``backend`` (with shots on a sampler, and errors by kind)."""

    def status(self, text: str) -> None:
        """A human line about progress."""


class NullObserver:
    """Observes nothing."""

    def training_step(self, cycle: str, *, step: int, total: int, loss: float, new_steps: int,
                      new_nonfinite: int) -> None:
        pass

    def circuits_run(self, backend: str, *, circuits: int, shots: int, errors: Mapping[str, int]) -> None:
        pass

    def status(self, text: str) -> None:
        pass


class Trainer(Protocol):
    """Trains candidates and evaluates versions. Implementations: the model-backed trainer of the daemon,
    :class:`tests.support.standin_trainer.StandinTrainer` for tests."""

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        """Trains in ``workdir`` (continuing ``resume_from`` if given, warm-starting from the verified champion
        artifact ``parent_dir`` if given), writing step checkpoints via :func:`save_checkpoint`.

        Raises:
            CycleInterrupted: stopped on request after a checkpoint (the cycle resumes later).
        """
        ...

    def evaluate(self, artifact_dir: Path, *, version_id: str, window: int | None = None) -> EvalOutcome:
        """Scores a verified artifact on the held-out set.

        ``window`` None: the fixed held-out set (the gate compares two versions on the same examples). An integer
        (the scheduled evaluation's time window): a fresh sample of the held-out pool seeded by it, so the
        champion's scheduled series carries the sampling variance a drift detector needs; two versions scored
        in the same window still see the same examples.
        """
        ...


def parallel_slots(trainer: Trainer) -> int:
    """How many ``train`` calls ``trainer`` can run at once right now: its ``free_slots()`` when it has one (a Ray
    cluster: its free CPUs over the CPUs a task asks), else 1 (local child processes train one at a time, and a
    trainer that says nothing is not assumed to be safe to call from several threads)."""
    free_slots = getattr(trainer, "free_slots", None)
    return max(1, int(free_slots())) if callable(free_slots) else 1


class DecisionLike(Protocol):
    """What a promotion gate returns; ``policies.Decision`` fits, so does :class:`GateDecision`."""

    @property
    def action(self) -> str: ...

    @property
    def reasons(self) -> Any: ...

    @property
    def evidence(self) -> Mapping[str, Any]: ...


PromotionGate = Callable[[EvalOutcome, EvalOutcome | None, datetime], DecisionLike]
"""``gate(candidate, champion_or_None, now)``: action ``promote``, ``reject`` or ``hold``."""


@dataclass(frozen=True)
class GateDecision:
    """A minimal decision for simple gates (tests, the stand-in)."""

    action: str
    reasons: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)



def save_checkpoint(workdir: Path, step: int, write: Callable[[Path], None]) -> Path:
    """Writes a step checkpoint atomically: ``write(tmpdir)`` fills a temporary directory, which is fsynced
    and renamed to ``<workdir>/checkpoints/step-<step>``. Returns the checkpoint directory."""
    root = workdir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{secrets.token_hex(4)}"
    tmp.mkdir()
    write(tmp)
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if final.exists():  # the same step written again after a resume: keep the newer one
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(root)
    return final


def latest_checkpoint(workdir: Path) -> Path | None:
    """The newest complete checkpoint (temporary directories of interrupted writes are ignored)."""
    root = workdir / CHECKPOINTS
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    return steps[-1] if steps else None


def checkpoint_step(checkpoint: Path) -> int:
    """The step number of a checkpoint directory made by :func:`save_checkpoint`."""
    found = _STEP_DIR.match(checkpoint.name)
    if found is None:
        raise ValueError(f"{checkpoint} is not a checkpoint directory (step-<8 digits>)")
    return int(found.group(1))


def prune_checkpoints(workdir: Path, *, keep: int = 2) -> None:
    """Deletes all but the newest ``keep`` checkpoints, and leftovers of interrupted writes."""
    root = workdir / CHECKPOINTS
    if not root.is_dir():
        return
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old)
