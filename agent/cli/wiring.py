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
    ``[cluster] address``, the same children on the Ray cluster's nodes, their tasks keyed by the lease epoch and
    their results fenced by it (Ray is imported only in the bridge child, never in the daemon); either way wrapped
    so a self-improvement cycle gets the usage log's prompts (:mod:`agent.daemon.usage_pool`)."""
    observer = DaemonTrainingObserver(rt.store, rt.metrics, rt.set_status)
    trainer: Trainer
    if rt.config.cluster.address:
        from agent.child.remote import RayTrainer

        trainer = RayTrainer(
            lambda: rt.config,
            rt.runner,
            observer=observer,
            epoch=lambda: rt.leadership.epoch,
            fence=rt.store.check_fence,
        )
    else:
        trainer = ChildTrainer(lambda: rt.config, rt.runner, observer=observer)
    # A self-improvement cycle samples on the prompts real traffic sent: exported from the usage log beforehand.
    return UsagePoolTrainer(trainer, rt.store)


def run(config_path: Path | None) -> int:
    """Runs the daemon until SIGTERM; returns its exit status."""
    return run_daemon(config_path, cycles_factory=lambda config: PolicyCycleDriver(model_trainer))
