"""The job protocol that every hardware backend speaks: the emulator, the Origin QCloud adapter, any cirq.Sampler.

A *program* is one circuit with one parameter assignment and a shot count; a *job* is a batch of programs
submitted together (vendors cap the batch size). Jobs move QUEUED → RUNNING → DONE | FAILED | CANCELLED.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cirq
import numpy as np


class JobState(enum.Enum):
    """Where a job is in its lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for DONE, FAILED and CANCELLED: the state will not change again."""
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Program:
    """One circuit, one parameter assignment, a number of shots.

    Attributes:
        circuit: a circuit with terminal measurements; may hold sympy symbols resolved by ``params``.
        params: values of the circuit's symbols.
        repetitions: shots.
    """

    circuit: cirq.AbstractCircuit
    params: cirq.ParamResolver = field(default_factory=cirq.ParamResolver)
    repetitions: int = 1000

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be >= 1, got {self.repetitions}")
        # Accept plain dicts for convenience; store the canonical resolver.
        object.__setattr__(self, "params", cirq.ParamResolver(self.params))


@dataclass(frozen=True)
class JobStatus:
    """A job's state; for FAILED the error kind (``server_error``, …) and the backend's message."""

    state: JobState
    error_kind: str | None = None
    message: str = ""


@dataclass(frozen=True)
class ProgramResult:
    """The measured bits of one program.

    Attributes:
        result: measurement records per key, as cirq returns them (``result.measurements[key]`` is
            ``[repetitions, n_bits]``).
        physical_qubits: per measurement key, the device qubits that were read, in bit order. Readout-error
            mitigation needs them because routing may move a logical qubit to any physical one.
    """

    result: cirq.Result
    physical_qubits: Mapping[str, tuple[cirq.Qid, ...]]

    def bits(self, key: str) -> np.ndarray:
        """The ``[repetitions, n_bits]`` array of one measurement key."""
        return np.asarray(self.result.measurements[key])


@runtime_checkable
class JobBackend(Protocol):
    """What the executor needs from a vendor: submit a batch, poll it, fetch its results, cancel it."""

    @property
    def max_programs_per_job(self) -> int:
        """The vendor's cap on programs per job."""
        ...

    def estimate_cost(self, programs: Sequence[Program]) -> float:
        """What a job of these programs would cost if it completes, in the backend's currency."""
        ...

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        """Submit a job and return its id.

        Submitting the same ``client_token`` twice returns the first job's id (idempotent submission), so a
        caller that lost the reply can retry safely.

        Raises:
            TransientBackendError: rate limited, server error or device offline; retry later.
            DeviceValidationError: a program cannot run on this device.
            JobTooLargeError: more programs or shots than the vendor accepts.
        """
        ...

    def status(self, job_id: str) -> JobStatus:
        """The job's current state."""
        ...

    def results(self, job_id: str) -> list[ProgramResult]:
        """The results of a DONE job, one per submitted program, in submission order."""
        ...

    def cancel(self, job_id: str) -> None:
        """Cancel a job that has not finished; a no-op for finished ones."""
        ...
