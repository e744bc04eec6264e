"""The hardware path: the job protocol, its exceptions, injected time, shot estimates and training on a device."""

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
from quantum.hardware.gradients import Jacobian, parameter_shift_estimate  # noqa: E402
from quantum.hardware.loop import DeviceQnn, RefineConfig, RefineResult, RefineStep, refine_on_device  # noqa: E402
from quantum.hardware.protocol import JobBackend, JobState, JobStatus, Program, ProgramResult

# After the vocabulary above: these import the executor, which imports that vocabulary.
from quantum.hardware.shots import Estimate, ExecutorBackend, estimate_results, programs_for  # noqa: E402, I001

__all__ = [
    "BudgetExhaustedError",
    "Clock",
    "DeviceOfflineError",
    "DeviceQnn",
    "DeviceValidationError",
    "Estimate",
    "ExecutorBackend",
    "FakeClock",
    "Jacobian",
    "JobFailedError",
    "JobBackend",
    "JobNotDoneError",
    "JobState",
    "JobStatus",
    "JobTooLargeError",
    "Program",
    "ProgramResult",
    "RealClock",
    "RefineConfig",
    "RefineResult",
    "RefineStep",
    "RetriesExhaustedError",
    "TransientBackendError",
    "estimate_results",
    "parameter_shift_estimate",
    "programs_for",
    "refine_on_device",
]
