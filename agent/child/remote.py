"""Training and evaluation on a Ray cluster, behaving like local children (``[cluster] address`` set).

Ray is used for fan-out only; leadership stays with the database lease (Ray's head keeps its state in memory and is
a single point of failure). :class:`RayTrainer` is the daemon's :class:`~agent.child.trainer.ChildTrainer` with one
difference: its tasks run on the cluster's nodes. It hands every task to a :class:`RayRunner`, which runs a small
local *bridge* child (:mod:`agent.child.bridge`) through the daemon's own :class:`~agent.child.runner.ChildRunner`;
the bridge submits the task to Ray and relays it. Hence, with no code of their own:

* progress: the remote child's events (steps and losses, checkpoints, circuits, self-improvement rounds) reach the
  daemon's observer and the cycle's fencing check as a local child's do;
* stopping: SIGTERM of the daemon, a lost lease, a train timeout, a fencing refusal — whatever stops the local
  child stops the bridge, which asks the remote child to checkpoint, kills it after the grace and cancels the Ray
  task (``ray.cancel(force=True)``) if it still runs; a bridge that is itself killed ends its Ray job, and Ray
  kills the job's tasks;
* CPU accounting: the remote child measures ``train_cpu_s`` as a local one does (that is what the budget charges);
  the task's whole CPU time on its node (the task process and the child) is added as ``remote_cpu_s``;
* a lost head or a lost node after every retry interrupts the cycle (it resumes from its checkpoint on a later
  tick, at most ``max_resumes`` times); a failing child fails it.

Tasks are keyed by (kind, cycle or version, lease epoch) (:class:`~agent.child.bridge.TaskKey`). Re-running a key
is idempotent: the same working directory, resumed from its newest checkpoint. A checkpoint or a result that
arrives once the epoch has moved on is refused with :class:`~agent.store.StaleEpochError` before anything is
written, and the remote task is stopped.

Every node must mount the daemon's state directory (cycles, dataset, work, versions) and ``[artifacts] root`` at
the same paths, and have the same qtha installed. Ray is imported only in the bridge child: the daemon never
imports it (nor does the embedded default).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import policies
from agent.child.bridge import BRIDGE_ENTRY, RESOURCES_ENTRY, RemoteSpec, TaskKey, gpus_to_request
from agent.child.channel import Channel, remove_quietly
from agent.child.runner import ChildOutcome, ChildRunner
from agent.child.trainer import EVALUATE_ENTRY, TRAIN_ENTRY, ChildTrainer
from agent.config import ClusterConfig, QthaConfig
from agent.cycle.trainer import Progress, TrainingObserver, TrainOutcome
from agent.store import StaleEpochError

__all__ = ["RayRunner", "RayTrainer", "RemoteTask", "task_subject"]

log = logging.getLogger("qtha.trainer")

_KEEP_TASKS = 256  # records of the newest remote tasks kept for logs, status and tests


def _no_epoch() -> int | None:
    return None


def _no_fence() -> None:
    pass


@dataclass
class RemoteTask:
    """What became of one remote task (for logs, status and tests).

    Attributes:
        key: its identity.
        status: ``submitted``, then ``done``, ``interrupted``, ``failed``, ``killed``, ``timeout`` or ``refused``
            (its result or checkpoint came from a stale epoch).
        nodes: the node of every attempt, in order (a retry after a lost node adds one).
        node: the node that finished it.
        cpu_s: CPU-seconds of the finishing attempt on its node (task process and child).
        bridge_pid: the local bridge child's process id.
        resources: what the task asked Ray for (``num_cpus``, ``num_gpus``, ``memory`` in bytes).
        phases: the bridge's ``remote`` events in order (``submitted``, ``started``, ``stopping``, ``cancelled``,
            ``head-lost``, ``unreachable``, ``finished``).
    """

    key: TaskKey
    status: str = "submitted"
    nodes: list[str] = field(default_factory=list)
    node: str | None = None
    cpu_s: float | None = None
    bridge_pid: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)


class RayRunner:
    """Runs child tasks on a Ray cluster through a local bridge child; the interface of
    :class:`~agent.child.runner.ChildRunner`.

    Args:
        local: runs the bridge child; the daemon's runner, so its stop requests reach remote tasks.
        config: the current configuration (``[cluster]`` and ``daemon.stop_timeout_s`` are read at every task).
        epoch: this process's leader lease epoch now (None when not leading).
        fence: raises :class:`~agent.store.StaleEpochError` when this process's lease term is no longer current
            (the store's ``check_fence``).
    """

    def __init__(
        self,
        local: ChildRunner,
        config: Callable[[], QthaConfig],
        *,
        epoch: Callable[[], int | None] = _no_epoch,
        fence: Callable[[], None] = _no_fence,
    ) -> None:
        self._local = local
        self._config = config
        self._epoch = epoch
        self._fence = fence
        self._lock = threading.Lock()
        self._running: set[TaskKey] = set()
        self.tasks: list[RemoteTask] = []  # the newest ones, oldest first

    # The stop/reset/running protocol is the local runner's: the bridge is its child.
    @property
    def running(self) -> bool:
        return self._local.running

    def request_stop(self) -> bool:
        return self._local.request_stop()

    def reset(self) -> None:
        self._local.reset()

    def run(
        self,
        entry: str,
        payload: Mapping[str, Any],
        work_dir: Path,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> ChildOutcome:
        """Runs ``entry(payload, ctx)`` on a node of the cluster and blocks until it ends (see ChildRunner.run).

        Raises:
            StaleEpochError: a checkpoint or the result arrived after the lease epoch moved on (the remote task
                was stopped; nothing of it was accepted).
            RuntimeError: a task with the same key is already running in this process.
        """
        config = self._config()
        cluster = config.cluster
        if not cluster.address:
            raise ValueError("RayRunner needs [cluster] address (a Ray head: host:6379 or ray://host:10001)")
        key = TaskKey(entry.rpartition(":")[2], _subject(payload, work_dir), self._epoch())
        record = RemoteTask(key)
        with self._lock:
            if key in self._running:
                raise RuntimeError(f"remote task {key.name} is already running in this process")
            self._running.add(key)
            self.tasks.append(record)
            del self.tasks[:-_KEEP_TASKS]
        try:
            channels = work_dir / "remote"
            # One writer per working directory: an older submission of this task that may still run on a node (its
            # bridge was killed, or the head was lost while the node lived on) is asked to stop before this one starts.
            for older in sorted(channels.glob(f"qtha-{key.kind}-{key.subject}-e*")) if channels.is_dir() else ():
                Channel(older).request_stop()
            channel = channels / f"{key.name}-{secrets.token_hex(4)}"
            spec = _spec(entry, payload, key, channel, cluster, grace_s=config.daemon.stop_timeout_s / 2)

            def relay(event: dict[str, Any]) -> None:
                if event.get("event") == "remote":
                    self._remote_event(record, event)
                    return
                if event.get("event") == "checkpoint":
                    self._accept(record, what=f"checkpoint at step {event.get('step')}")
                if on_event is not None:
                    on_event(event)

            outcome = self._local.run(BRIDGE_ENTRY, spec.to_dict(), work_dir, on_event=relay, timeout_s=timeout_s)
            if outcome.status == "done":
                self._accept(record, what="result")
                remove_quietly(channel)
            if record.status not in ("done", "refused"):
                record.status = outcome.status
            return outcome
        finally:
            with self._lock:
                self._running.discard(key)

    def cluster_resources(self) -> dict[str, dict[str, float]] | None:
        """The cluster's ``available`` and ``total`` resources (a one-shot bridge child); None when no head
        answers within ``[cluster] head_timeout_s``."""
        cluster = self._config().cluster
        payload = {"address": cluster.address, "head_timeout_s": cluster.head_timeout_s}
        work = self._config().state_dir / "work" / "cluster-resources"
        outcome = self._local.run(RESOURCES_ENTRY, payload, work, timeout_s=cluster.head_timeout_s + 60.0)
        if outcome.status != "done":
            log.warning("could not read the Ray cluster's resources (%s): %s", outcome.status, outcome.error)
            return None
        return {k: {str(r): float(v) for r, v in dict(found).items()} for k, found in dict(outcome.result).items()}

    def record(self, kind: str, subject: str) -> RemoteTask | None:
        """The newest task of ``kind`` about ``subject`` (a cycle id or a version)."""
        with self._lock:
            found = [t for t in self.tasks if t.key.kind == kind and t.key.subject == subject]
        return found[-1] if found else None

    def _accept(self, record: RemoteTask, *, what: str) -> None:
        """Refuses anything of a task whose epoch is no longer this process's current lease term."""
        now = self._epoch()
        try:
            if now != record.key.epoch:
                raise StaleEpochError(
                    f"{what} of remote task {record.key.name} refused: submitted under lease epoch "
                    f"{record.key.epoch}, the lease is now at {now}; the leader of the current epoch resumes the work"
                )
            self._fence()
        except StaleEpochError as exc:
            record.status = "refused"
            log.warning("%s", exc)
            raise

    def _remote_event(self, record: RemoteTask, event: Mapping[str, Any]) -> None:
        phase = str(event.get("phase"))
        record.phases.append(phase)
        if phase == "submitted":
            record.bridge_pid = int(event["bridge_pid"])
            record.resources = {str(k): float(v) for k, v in dict(event.get("resources", {})).items()}
            log.info("remote task %s submitted (%s)", record.key.name, event.get("resources"))
        elif phase == "started":
            record.nodes.append(str(event["node"]))
            attempt = len(record.nodes)
            log.info("remote task %s attempt %d started on node %s (resume from %s)", record.key.name, attempt,
                     str(event["node"])[:12], event.get("resume_from"))
        elif phase == "finished":
            record.node, record.cpu_s = str(event["node"]), float(event["cpu_s"])
            if event.get("status") == "done":
                record.status = "done"
            log.info("remote task %s %s on node %s: %.1f CPU-s, %.1f s, %d attempt(s)", record.key.name,
                     event.get("status"), record.node[:12], record.cpu_s, float(event["wall_s"]),
                     int(event.get("attempts", 0)))
        elif phase in ("head-lost", "unreachable"):
            log.warning("remote task %s: %s", record.key.name, event.get("message"))
        else:  # stopping, cancelled
            log.info("remote task %s: %s", record.key.name, phase)


def task_subject(workdir: Path) -> str:
    """What a training task is about: the cycle id (its working directory's name), or ``<cycle>.<name>`` for a
    working directory inside the cycle's (a parallel candidate's ``candidate-2``)."""
    return workdir.name if workdir.name.isdigit() else f"{workdir.parent.name}.{workdir.name}"


def _subject(payload: Mapping[str, Any], work_dir: Path) -> str:
    if payload.get("workdir"):
        return task_subject(Path(str(payload["workdir"])))
    if payload.get("version_id"):
        return str(payload["version_id"])
    return work_dir.name


def _spec(
    entry: str, payload: Mapping[str, Any], key: TaskKey, channel: Path, cluster: ClusterConfig, *, grace_s: float
) -> RemoteSpec:
    assert cluster.address is not None
    return RemoteSpec(
        entry=entry,
        payload=payload,
        key=key,
        channel=str(channel),
        address=cluster.address,
        num_cpus=cluster.num_cpus,
        memory_bytes=int(cluster.memory_gb * 2**30),
        num_gpus=cluster.num_gpus,
        max_retries=cluster.max_retries,
        head_timeout_s=cluster.head_timeout_s,
        grace_s=grace_s,
    )


class RayTrainer(ChildTrainer):
    """The daemon's trainer with its children on a Ray cluster (see the module docstring).

    Args:
        config: the configuration, or a function returning the current one.
        runner: the daemon's child runner (it runs the bridge children; its stop requests reach remote tasks).
        observer: told of training steps, circuits and progress lines, as for local children.
        epoch, fence: the lease's epoch and fencing check (see :class:`RayRunner`).
        train_entry, evaluate_entry: the tasks the nodes run (tests point at their own).
    """

    def __init__(
        self,
        config: QthaConfig | Callable[[], QthaConfig],
        runner: ChildRunner,
        *,
        observer: TrainingObserver | None = None,
        epoch: Callable[[], int | None] = _no_epoch,
        fence: Callable[[], None] = _no_fence,
        train_entry: str = TRAIN_ENTRY,
        evaluate_entry: str = EVALUATE_ENTRY,
    ) -> None:
        self.remote = RayRunner(runner, lambda: self.config, epoch=epoch, fence=fence)
        super().__init__(
            config, self.remote, observer=observer, train_entry=train_entry, evaluate_entry=evaluate_entry
        )

    def free_slots(self) -> int:
        """How many tasks the cluster could start now (at least 1): its free CPUs over ``num_cpus`` (and free GPUs
        over the GPUs a task asks, when it asks). What caps the candidates a cycle trains at once; each
        :meth:`train` call, from its own thread, is one task."""
        found = self.remote.cluster_resources()
        if found is None:
            return 1
        cluster, free = self.config.cluster, found["available"]
        slots = int(free.get("CPU", 0.0) // cluster.num_cpus)
        gpus = gpus_to_request(cluster.num_gpus, found["total"])
        if gpus > 0:
            slots = min(slots, int(free.get("GPU", 0.0) // gpus))
        return max(1, slots)

    @property
    def nodes(self) -> list[tuple[str, str]]:
        """``(kind, node id)`` of every finished remote task, in order."""
        return [(t.key.kind, t.node) for t in self.remote.tasks if t.node is not None and t.status == "done"]

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        outcome = super().train(recipe, workdir, resume_from=resume_from, parent_dir=parent_dir, progress=progress)
        task = self.remote.record("train", task_subject(workdir))
        if task is None or task.cpu_s is None:
            return outcome
        metrics = dict(outcome.metrics)
        metrics["remote_cpu_s"] = task.cpu_s
        metrics.setdefault("train_cpu_s", task.cpu_s)  # a task that does not measure its own is charged this
        return dataclasses.replace(outcome, metrics=metrics)
