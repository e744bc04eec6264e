"""Training and evaluation as Ray tasks: the leader is the Ray driver, the work runs on the cluster's nodes.

Ray is used for fan-out only; leadership stays with the database lease (Ray's head keeps its state in memory and
is a single point of failure). :class:`RayTrainer` wraps any :class:`~agent.cycle.trainer.Trainer` and runs its
``train`` and ``evaluate`` as Ray tasks with a resource request and Ray's retries for lost workers; the cycle
state machine around it is unchanged (its transitions, fenced by the lease's epoch, are written by the driver
only). Paths are passed as they are: every node must see the state directory's ``cycles/`` and the artifacts
(a shared mount, ``[artifacts] root``).

Ray is imported only here and only when a :class:`RayTrainer` is used (``[cluster] address`` set): the embedded
default never imports it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import policies
from agent.child.runner import ChildRunner
from agent.child.trainer import ChildTrainer
from agent.config import QthaConfig
from agent.cycle.trainer import EvalOutcome, Progress, Trainer, TrainOutcome, latest_checkpoint

__all__ = ["RayTrainer", "WorkerChildTrainer"]

log = logging.getLogger(__name__)


def _no_progress(_step: int, _checkpoint: Path | None) -> None:
    pass


def _train_task(
    inner: Trainer, recipe: policies.Recipe, workdir: Path, resume_from: Path | None, parent_dir: Path | None
) -> tuple[TrainOutcome, str]:
    import ray

    outcome = inner.train(recipe, workdir, resume_from=resume_from, parent_dir=parent_dir, progress=_no_progress)
    return outcome, ray.get_runtime_context().get_node_id()


def _evaluate_task(inner: Trainer, artifact_dir: Path, version_id: str) -> tuple[EvalOutcome, str]:
    import ray

    return inner.evaluate(artifact_dir, version_id=version_id), ray.get_runtime_context().get_node_id()


class RayTrainer:
    """A :class:`~agent.cycle.trainer.Trainer` whose work runs as Ray tasks.

    Args:
        inner: the trainer to run remotely (pickled to the worker; it must not hold open resources).
        address: the Ray cluster (``ray://host:10001`` or ``host:6379``); None: an already initialised driver.
        num_cpus: CPUs each task requests (a task waits until a node has them free).
        max_retries: how often Ray reruns a task whose worker died (training resumes from its last checkpoint).

    Attributes:
        nodes: ``(task, node id)`` of every task run so far, in order (for logs and tests).
    """

    def __init__(
        self, inner: Trainer, *, address: str | None, num_cpus: float = 1.0, max_retries: int = 2
    ) -> None:
        self.inner = inner
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.nodes: list[tuple[str, str]] = []

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        return ray

    def _run(self, kind: str, fn: Any, *args: Any) -> Any:
        ray = self._ray()
        task = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries)(fn)
        ref = task.remote(self.inner, *args)
        try:
            result, node = ray.get(ref)
        except BaseException:  # stopping (SIGTERM) or the driver failed: do not leave the task running
            ray.cancel(ref, force=True)
            raise
        self.nodes.append((kind, node))
        log.info("%s ran on Ray node %s", kind, node[:12])
        return result

    def free_slots(self) -> int:
        """How many tasks of ``num_cpus`` CPUs the cluster could start now (its free CPUs over ``num_cpus``, at
        least 1): what caps the candidates a cycle trains at once (``[cluster] parallel_candidates``; the cycle
        calls :meth:`train` from one thread per candidate, each call one task)."""
        free = float(self._ray().available_resources().get("CPU", 0.0))
        return max(1, int(free // self.num_cpus))

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        outcome: TrainOutcome = self._run("train", _train_task, recipe, workdir, resume_from, parent_dir)
        # The remote task cannot call back; report the final checkpoint so the cycle's ownership check runs.
        progress(outcome.steps, latest_checkpoint(workdir))
        return outcome

    def evaluate(self, artifact_dir: Path, *, version_id: str) -> EvalOutcome:
        outcome: EvalOutcome = self._run("evaluate", _evaluate_task, artifact_dir, version_id)
        return outcome


class WorkerChildTrainer:
    """The daemon's child-process trainer, built on the Ray worker from the configuration (which pickles; the
    daemon's runner, store and observer do not). Training progress reaches the database when the task returns,
    not step by step."""

    def __init__(self, config: QthaConfig) -> None:
        self.config = config
        self._trainer: ChildTrainer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_trainer": None}

    def _child(self) -> ChildTrainer:
        if self._trainer is None:
            self._trainer = ChildTrainer(self.config, ChildRunner())
        return self._trainer

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        return self._child().train(
            recipe, workdir, resume_from=resume_from, parent_dir=parent_dir, progress=progress
        )

    def evaluate(self, artifact_dir: Path, *, version_id: str) -> EvalOutcome:
        return self._child().evaluate(artifact_dir, version_id=version_id)
