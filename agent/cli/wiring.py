"""``qtha daemon``: the production wiring — the policy-driven cycle driver with the child-process model trainer."""

from __future__ import annotations

from pathlib import Path

from agent.child.trainer import ChildTrainer
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import run_daemon
from agent.daemon.runtime import Runtime
from agent.daemon.training_observer import DaemonTrainingObserver

__all__ = ["model_trainer", "run"]


def model_trainer(rt: Runtime) -> ChildTrainer:
    """The trainer of the daemon: ``model/`` in a child process, progress into the database and metrics."""
    return ChildTrainer(
        lambda: rt.config, rt.runner, observer=DaemonTrainingObserver(rt.store, rt.metrics, rt.set_status)
    )


def run(config_path: Path | None) -> int:
    """Runs the daemon until SIGTERM; returns its exit status."""
    return run_daemon(config_path, cycles_factory=lambda config: PolicyCycleDriver(model_trainer))
