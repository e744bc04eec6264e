"""The vocabulary every device-facing layer speaks: programs and the job protocol, their errors, prices, time.

The lowest layer of the device path: the emulator, the executor and the vendor adapters import it, and it imports
nothing else of ``quantum``, so none of them needs a layer above its own.
"""

from quantum.qpu.clock import DeviceClock, RealDeviceClock, SimulatedDeviceClock
from quantum.qpu.errors import (
    DeviceOfflineError,
    DeviceValidationError,
    JobFailedError,
    JobNotDoneError,
    JobTooLargeError,
    RetriesExhaustedError,
    SpendLimitError,
    TransientBackendError,
)
from quantum.qpu.pricing import DevicePricing
from quantum.qpu.protocol import JobBackend, JobState, JobStatus, Program, ProgramResult

__all__ = [
    "DeviceClock",
    "DeviceOfflineError",
    "DevicePricing",
    "DeviceValidationError",
    "JobBackend",
    "JobFailedError",
    "JobNotDoneError",
    "JobState",
    "JobStatus",
    "JobTooLargeError",
    "Program",
    "ProgramResult",
    "RealDeviceClock",
    "RetriesExhaustedError",
    "SimulatedDeviceClock",
    "SpendLimitError",
    "TransientBackendError",
]
