"""A plain record of what the executor did, for the agent to export as metrics (no metrics library here)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpendLimit:
    """Limits on what an executor may spend over its lifetime; ``None`` means unlimited.

    Attributes:
        max_shots: total shots of completed and in-flight jobs.
        max_cost: total price of completed and in-flight jobs, in the backend's currency.
    """

    max_shots: int | None = None
    max_cost: float | None = None


@dataclass(frozen=True)
class ExecutionStats:
    """Counters since the executor was created.

    Attributes:
        programs: programs whose results were returned (each once).
        jobs_submitted: accepted submissions (retries included).
        jobs_completed: jobs that ended DONE and were collected.
        jobs_failed: jobs that ended FAILED or CANCELLED by the backend.
        jobs_timed_out: jobs the executor cancelled for exceeding ``job_timeout_s``.
        retries: resubmissions after a transient error.
        errors: per error kind (``rate_limit``, ``server_error``, ``device_offline``, ``timeout``, …), how often.
        shots: shots of completed jobs.
        cost: price of completed jobs.
        busy_s: clock seconds spent inside ``run``.
    """

    programs: int = 0
    jobs_submitted: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    jobs_timed_out: int = 0
    retries: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    shots: int = 0
    cost: float = 0.0
    busy_s: float = 0.0


class StatsRecorder:
    """Thread-safe accumulator behind :class:`ExecutionStats` and the reservations against the spend limit."""

    def __init__(self, limit: SpendLimit) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._stats = ExecutionStats()
        self._reserved_shots = 0
        self._reserved_cost = 0.0

    def snapshot(self) -> ExecutionStats:
        """The counters now."""
        with self._lock:
            return ExecutionStats(**{**self._stats.__dict__, "errors": dict(self._stats.errors)})

    def add(self, **deltas: float) -> None:
        """Add to numeric counters, e.g. ``add(jobs_submitted=1)``."""
        with self._lock:
            values = {k: getattr(self._stats, k) + v for k, v in deltas.items()}
            self._stats = ExecutionStats(**{**self._stats.__dict__, **values})

    def error(self, kind: str) -> None:
        """Count one error of ``kind``."""
        with self._lock:
            errors = dict(self._stats.errors)
            errors[kind] = errors.get(kind, 0) + 1
            self._stats = ExecutionStats(**{**self._stats.__dict__, "errors": errors})

    def reserve(self, shots: int, cost: float) -> bool:
        """Reserve room under the limit for a job about to be submitted; False (nothing reserved) if it would not fit."""
        with self._lock:
            spent_shots = self._stats.shots + self._reserved_shots + shots
            spent_cost = self._stats.cost + self._reserved_cost + cost
            if self._limit.max_shots is not None and spent_shots > self._limit.max_shots:
                return False
            if self._limit.max_cost is not None and spent_cost > self._limit.max_cost + 1e-12:
                return False
            self._reserved_shots += shots
            self._reserved_cost += cost
            return True

    def release(self, shots: int, cost: float, *, spent: bool) -> None:
        """Drop a reservation; when ``spent`` (the job completed) charge it to the counters."""
        with self._lock:
            self._reserved_shots -= shots
            self._reserved_cost -= cost
            if spent:
                self._stats = ExecutionStats(
                    **{
                        **self._stats.__dict__,
                        "shots": self._stats.shots + shots,
                        "cost": self._stats.cost + cost,
                    }
                )

    def remaining(self) -> str:
        """What is left under the limit, in words, for error messages."""
        with self._lock:
            parts = []
            if self._limit.max_shots is not None:
                parts.append(f"{self._limit.max_shots - self._stats.shots - self._reserved_shots} shots")
            if self._limit.max_cost is not None:
                parts.append(f"{self._limit.max_cost - self._stats.cost - self._reserved_cost:.4f} in cost")
            return " and ".join(parts) or "unlimited"
