"""The emulated cloud's queue: seeded latency, transient failures and the lifecycle of each job.

Time comes from an injected clock: a job's state is a function of the clock reading, so tests with a fake
clock see the same lifecycle as real-time runs without waiting.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, fields

import numpy as np

from quantum.qpu.protocol import JobState, JobStatus


@dataclass(frozen=True)
class LatencyModel:
    """How long jobs wait and run.

    Network and scheduler overhead (``queue_s`` ± ``queue_jitter_s``) overlaps between jobs; the device itself runs
    one job at a time for ``per_program_s`` per program plus ``per_shot_s`` per shot, so concurrency hides
    overhead but cannot exceed the device's throughput.
    """

    queue_s: float = 2.0
    queue_jitter_s: float = 1.0
    per_program_s: float = 0.005
    per_shot_s: float = 2e-5

    def __post_init__(self) -> None:
        values = (self.queue_s, self.queue_jitter_s, self.per_program_s, self.per_shot_s)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"latencies must be finite and >= 0, got {self}")
        if self.queue_jitter_s > self.queue_s:
            raise ValueError(
                f"queue_jitter_s ({self.queue_jitter_s}) must not exceed queue_s ({self.queue_s})"
            )

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        """Parse ``{"queue_s": 2.0, "per_shot_s": 2e-5, ...}`` (omitted fields keep their defaults).

        Raises:
            ValueError: not a JSON object, an unknown field, or a value that is not a number >= 0.
        """
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            unknown = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"latency file: unknown fields {unknown}; allowed: {sorted(known)}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in data.values()):
            raise ValueError(f"latency file: every value must be a number of seconds, got {data}")
        return cls(**{k: float(v) for k, v in data.items()})


@dataclass(frozen=True)
class FailureModel:
    """Seeded transient failures, drawn per submission.

    Attributes:
        rate_limit: probability that a submission is refused with ``rate_limit``.
        server_error: probability that an accepted job ends FAILED with ``server_error``.
        device_offline: probability that a submission starts an outage of ``offline_s`` seconds, during which
            every submission is refused with ``device_offline``.
        offline_s: outage length. ``float('inf')`` makes the device permanently offline after the first outage.
    """

    rate_limit: float = 0.0
    server_error: float = 0.0
    device_offline: float = 0.0
    offline_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("rate_limit", "server_error", "device_offline"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    @classmethod
    def transient(cls, rate: float, *, offline_s: float = 2.0) -> FailureModel:
        """Three equally likely kinds whose combined probability per submission is ``rate``.

        Outages also refuse the submissions that arrive while they last, so the observed rate is a little higher.
        """
        each = 1.0 - (1.0 - rate) ** (1.0 / 3.0)
        return cls(rate_limit=each, server_error=each, device_offline=each, offline_s=offline_s)


@dataclass(frozen=True)
class SubmissionDraw:
    """What fate the seeded draw gives one submission."""

    refused: str | None  # "rate_limit" | "device_offline" | None
    server_error: bool
    queue_s: float


def draw_submission(
    seed: int, client_token: str, failures: FailureModel, latency: LatencyModel
) -> SubmissionDraw:
    """Draw a submission's fate from ``(seed, client_token)`` alone, so it is independent of thread order."""
    rng = np.random.default_rng([seed, zlib.crc32(client_token.encode())])
    u_offline, u_rate, u_server, u_queue = rng.random(4)
    refused = None
    if u_offline < failures.device_offline:
        refused = "device_offline"
    elif u_rate < failures.rate_limit:
        refused = "rate_limit"
    queue_s = latency.queue_s + (2 * u_queue - 1) * latency.queue_jitter_s
    return SubmissionDraw(refused, bool(u_server < failures.server_error), float(queue_s))


@dataclass
class EmulatedJob:
    """One job's bookkeeping (mutable; guarded by the emulator's lock)."""

    job_id: str
    n_programs: int
    shots: int
    submitted_at: float
    starts_at: float
    ends_at: float
    server_error: bool
    cancelled_at: float | None = None

    def status(self, now: float) -> JobStatus:
        """The job's state at time ``now``."""
        if self.cancelled_at is not None and self.cancelled_at < self.ends_at:
            return JobStatus(JobState.CANCELLED, message=f"cancelled at t={self.cancelled_at:.3f}")
        if now < self.starts_at:
            return JobStatus(JobState.QUEUED)
        if now < self.ends_at:
            return JobStatus(JobState.RUNNING)
        if self.server_error:
            return JobStatus(
                JobState.FAILED,
                error_kind="server_error",
                message=f"job {self.job_id}: internal error on the control electronics; resubmit",
            )
        return JobStatus(JobState.DONE)
