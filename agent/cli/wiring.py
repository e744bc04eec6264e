"""``qtha daemon``: the production wiring — the policy-driven cycle driver with the child-process model trainer."""

from __future__ import annotations

from pathlib import Path

from agent.child.trainer import ChildTrainer
from agent.cycle.trainer import Trainer
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import run_daemon
from agent.daemon.runtime import Runtime
from agent.daemon.training_observer import DaemonTrainingObserver
from agent.daemon.usage_pool import UsagePoolTrainer

__all__ = ["model_trainer", "run"]


def model_trainer(rt: Runtime) -> Trainer:
    """The trainer of the daemon: ``model/`` in a child process, progress into the database and metrics; with
    ``[cluster] address``, the same child trainer on the Ray cluster's nodes (Ray imported only then); either way
    wrapped so a self-improvement cycle gets the usage log's prompts (:mod:`agent.daemon.usage_pool`)."""
    cluster = rt.config.cluster
    trainer: Trainer
    if cluster.address:
        from agent.child.remote import RayTrainer, WorkerChildTrainer

        trainer = RayTrainer(
            WorkerChildTrainer(rt.config),
            address=cluster.address,
            num_cpus=cluster.num_cpus,
            max_retries=cluster.max_retries,
        )
    else:
        trainer = ChildTrainer(
            lambda: rt.config, rt.runner, observer=DaemonTrainingObserver(rt.store, rt.metrics, rt.set_status)
        )
    # A self-improvement cycle samples on the prompts real traffic sent: exported from the usage log beforehand.
    return UsagePoolTrainer(trainer, rt.store)


def run(config_path: Path | None) -> int:
    """Runs the daemon until SIGTERM; returns its exit status."""
    return run_daemon(config_path, cycles_factory=lambda config: PolicyCycleDriver(model_trainer))
