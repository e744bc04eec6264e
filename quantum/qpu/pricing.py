"""What a device job costs: a fixed fee per job plus a price per shot (how QPU clouds bill)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quantum.qpu.protocol import Program


@dataclass(frozen=True)
class DevicePricing:
    """A device's prices (the emulator's bill, a vendor's list price for spend limits).

    Attributes:
        per_job: fixed fee per completed job.
        per_shot: price per shot, summed over the job's programs.
        currency: unit of the figures (informational).
    """

    per_job: float = 0.30
    per_shot: float = 0.00035
    currency: str = "USD"

    def __post_init__(self) -> None:
        if not (self.per_job >= 0 and self.per_shot >= 0):  # also refuses NaN
            raise ValueError(f"prices must be >= 0, got per_job={self.per_job}, per_shot={self.per_shot}")

    @classmethod
    def free(cls) -> DevicePricing:
        """No charge: simulators, and vendors whose prices were not configured (a money limit then never binds)."""
        return cls(per_job=0.0, per_shot=0.0)

    def job_cost(self, programs: Sequence[Program]) -> float:
        """The price of one job holding ``programs``."""
        return self.per_job + self.per_shot * sum(p.repetitions for p in programs)
