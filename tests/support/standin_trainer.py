"""An honest, tiny stand-in trainer: least-squares regression by minibatch SGD in numpy.

It does what a real trainer must do for the cycle — warm-start from the champion, write atomic step checkpoints,
resume from one bit-for-bit (the minibatch of step ``s`` depends only on ``(seed, s)``), write real files, and
score a fixed held-out set per example — in milliseconds and without importing JAX. Used by tests, the crash
test worker (:mod:`tests.support.crash_cycle`) and as a simulator for the daemon until the model trainer is wired in.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

import policies
from agent.cycle.trainer import (
    CycleInterrupted,
    EvalOutcome,
    GateDecision,
    NullObserver,
    Progress,
    TrainingObserver,
    TrainOutcome,
    checkpoint_step,
    save_checkpoint,
)

__all__ = ["StandinTrainer", "holm_selector", "mean_gain_gate", "standin_recipe"]

_WEIGHTS = "weights.npy"


@dataclass(frozen=True)
class _Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray


def standin_recipe(*, steps: int = 20, learning_rate: float = 0.05, batch_size: int = 8, seed: int = 0) -> policies.Recipe:
    """A recipe for :class:`StandinTrainer` (a LoRA recipe by type; the stand-in reads the run fields only)."""
    return policies.Recipe(
        adapter="lora",
        qnn_mode=None,
        qubits=0,
        layers=0,
        bond_dim=0,
        rank=8,
        learning_rate=learning_rate,
        steps=steps,
        backend="jax",
        batch_size=batch_size,
        seed=seed,
    )


class StandinTrainer:
    """Linear regression ``y = x·w + noise`` with a fixed seed per task.

    Reads the recipe's ``steps``, ``learning_rate``, ``batch_size`` and ``seed`` (see :func:`standin_recipe`);
    checkpoints after every step.

    Args:
        task_seed: draws the true weights and the data (same for every cycle).
        dim: number of features.
        stop_after_steps: for tests — raise :class:`CycleInterrupted` after this many steps of one call.
        observer: told each step's training loss, as the child trainer tells the daemon's observer.
        slots: how many candidates it says it can train at once (:func:`agent.cycle.trainer.parallel_slots`); it is
            safe to call from several threads (each call works in its own directory).
    """

    fingerprint = "standin-linear"

    def __init__(
        self,
        *,
        task_seed: int = 0,
        dim: int = 8,
        stop_after_steps: int | None = None,
        observer: TrainingObserver | None = None,
        slots: int = 1,
    ) -> None:
        rng = np.random.default_rng(task_seed)
        w_true = rng.normal(size=dim)
        x = rng.normal(size=(96, dim))
        y = x @ w_true + 0.3 * rng.normal(size=96)
        self._data = _Data(x[:64], y[:64], x[64:], y[64:])
        self.dim = dim
        self.stop_after_steps = stop_after_steps
        self.observer = observer or NullObserver()
        self.train_calls = 0
        self.slots = slots
        self._calls = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # pickled to Ray workers: a lock does not travel
        return {k: v for k, v in self.__dict__.items() if k != "_calls"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = threading.Lock()

    def free_slots(self) -> int:
        return self.slots

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        with self._calls:
            self.train_calls += 1
        cpu_started = time.process_time()
        steps, lr, batch, seed = recipe.steps, recipe.learning_rate, recipe.batch_size, recipe.seed
        every = 1
        if resume_from is not None:
            w = np.load(resume_from / _WEIGHTS)
            start = checkpoint_step(resume_from)
        else:
            w = np.load(parent_dir / _WEIGHTS) if parent_dir is not None else np.zeros(self.dim)
            start = 0
        x, y = self._data.x_train, self._data.y_train
        for step in range(start + 1, steps + 1):
            rows = np.random.default_rng([seed, step]).choice(len(x), size=batch, replace=False)
            grad = 2.0 * x[rows].T @ (x[rows] @ w - y[rows]) / batch
            w = w - lr * grad
            batch_loss = float(np.mean((x[rows] @ w - y[rows]) ** 2))
            self.observer.training_step(
                workdir.name, step=step, total=steps, loss=batch_loss, new_steps=1, new_nonfinite=0
            )
            ckpt = None
            if step % every == 0 or step == steps:
                ckpt = save_checkpoint(workdir, step, lambda d, w=w: np.save(d / _WEIGHTS, w))
            progress(step, ckpt)
            if self.stop_after_steps is not None and step - start >= self.stop_after_steps and step < steps:
                raise CycleInterrupted(f"stop requested after step {step}")
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / _WEIGHTS, w)
        loss = float(np.mean((x @ w - y) ** 2))
        (out / "manifest.json").write_text(
            json.dumps({"kind": "standin-linear", "dim": self.dim, "steps": steps}), encoding="utf-8"
        )
        return TrainOutcome(
            artifact_dir=out,
            steps=steps,
            metrics={"train_loss": loss, "train_cpu_s": time.process_time() - cpu_started},
            base_fingerprint=self.fingerprint,
            adapter_kind="linear",
            adapter_config={"dim": self.dim, "lr": lr, "batch": batch},
        )

    def evaluate(self, artifact_dir: Path, *, version_id: str, window: int | None = None) -> EvalOutcome:
        w = np.load(artifact_dir / _WEIGHTS)
        errors = (self._data.x_eval @ w - self._data.y_eval) ** 2
        rows = range(len(errors))
        if window is not None:  # a rotating half of the held-out pool, as the model trainer draws
            rows = sorted(np.random.default_rng([7, window]).choice(len(errors), size=len(errors) // 2, replace=False))
        scores = {f"ex-{i:03d}": -float(errors[i]) for i in rows}
        return EvalOutcome(version_id, scores, {"mse": float(np.mean(errors))})


def mean_gain_gate(min_gain: float = 0.0) -> Any:
    """A simple gate: promote when the candidate's mean score beats the champion's by more than ``min_gain``."""

    def gate(candidate: EvalOutcome, champion: EvalOutcome | None, now: datetime) -> GateDecision:
        if champion is None:
            return GateDecision("promote", ("no champion yet",), {"candidate_mean": candidate.mean})
        gain = candidate.mean - champion.mean
        evidence = {"gain": gain, "min_gain": min_gain, "at": now.isoformat()}
        if gain > min_gain:
            return GateDecision("promote", (f"mean gain {gain:.4g} > {min_gain}",), evidence)
        return GateDecision("reject", (f"mean gain {gain:.4g} <= {min_gain}",), evidence)

    return gate


def holm_selector(config: policies.PromotionConfig | None = None, *, seed: int = 0) -> Any:
    """The daemon's selection gate without a runtime: :func:`policies.select_candidate` (Holm's correction, at most
    one chosen) on the stand-in's scores (negative squared errors, so no absolute floor by default)."""
    from agent.daemon.gate import to_evaluation

    config = config or policies.PromotionConfig(floor=-1e9, min_slice_examples=5, small_slice_action="report")

    def select(candidates: Any, champion: EvalOutcome | None, now: datetime) -> policies.Selection:
        against = None if champion is None else to_evaluation(champion)
        return policies.select_candidate([to_evaluation(c) for c in candidates], against, now, config, seed=seed)

    return select
