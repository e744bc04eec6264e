"""The hardware path's shared vocabulary: the job protocol, its exceptions and injected time.

Kept free of heavier imports because the emulator, the executor and the vendor adapters all import it. The
training side lives in submodules (``shots``, ``gradients``, ``loop``, ``factory``), re-exported by ``quantum``.
"""

from quantum.hardware.clock import Clock, FakeClock, RealClock
from quantum.hardware.errors import (
    BudgetExhaustedError,
    DeviceOfflineError,
    DeviceValidationError,
    JobFailedError,
    JobNotDoneError,
    JobTooLargeError,
    RetriesExhaustedError,
    TransientBackendError,
)
from quantum.hardware.protocol import JobBackend, JobState, JobStatus, Program, ProgramResult

__all__ = [
    "BudgetExhaustedError",
    "Clock",
    "DeviceOfflineError",
    "DeviceValidationError",
    "FakeClock",
    "JobBackend",
    "JobFailedError",
    "JobNotDoneError",
    "JobState",
    "JobStatus",
    "JobTooLargeError",
    "Program",
    "ProgramResult",
    "RealClock",
    "RetriesExhaustedError",
    "TransientBackendError",
]
