"""The daemon's :class:`~agent.cycle.trainer.TrainingObserver`: training progress into the database
(``train_loss`` samples), the Prometheus metrics and the status line."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent.daemon.metrics import QthaMetrics
from agent.store import Store

__all__ = ["DaemonTrainingObserver"]


class DaemonTrainingObserver:
    """Args: store (samples), metrics (counters), status (the daemon's status line / sd_notify STATUS=)."""

    def __init__(self, store: Store, metrics: QthaMetrics, status: Callable[[str], None]) -> None:
        self._store = store
        self._metrics = metrics
        self._status = status

    def training_step(
        self, cycle: str, *, step: int, total: int, loss: float, new_steps: int, new_nonfinite: int
    ) -> None:
        self._metrics.train_progress(steps=new_steps, nonfinite=new_nonfinite)
        self._store.metrics.record(
            "train_loss", loss, source="trainer", labels={"cycle": cycle, "step": str(step), "of": str(total)}
        )
        self._status(f"cycle {cycle}: training step {step}/{total}, loss {loss:.4f}")

    def circuits_run(self, backend: str, *, circuits: int, shots: int, errors: Mapping[str, int]) -> None:
        self._metrics.quantum_usage(backend, circuits=circuits, shots=shots)
        for kind, count in errors.items():
            self._metrics.backend_error(backend, kind, count)

    def status(self, text: str) -> None:
        self._status(text)
