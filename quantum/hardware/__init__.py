"""The hardware path's shared vocabulary: the job protocol, its exceptions and injected time."""

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
    "JobFailedError",
    "JobBackend",
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
