"""Training on a device: QNN circuits as shot programs through the executor, gradients with error bars, the
hardware-in-the-loop refinement, and the factory that builds all of it from plain configuration values.

The top layer of ``quantum``: it uses the emulator, the executor and the vendor adapters, none of which imports it.
The vocabulary they share (programs, the job protocol, errors, the device clock) is :mod:`quantum.qpu`.
"""

from quantum.hardware.factory import (
    DeviceSetup,
    GradientKind,
    HardwareKind,
    HardwareOptions,
    OriginOptions,
    device_backend,
    executor_backend,
    job_backend,
)
from quantum.hardware.gradients import parameter_shift_estimate
from quantum.hardware.loop import DeviceQnn, RefineConfig, RefineResult, refine_on_device
from quantum.hardware.offline import OFFLINE_POLICIES, OfflineGuard, OfflineOutcome, OfflinePolicy
from quantum.hardware.shots import Estimate, ExecutorBackend

__all__ = [
    "OFFLINE_POLICIES",
    "DeviceQnn",
    "DeviceSetup",
    "Estimate",
    "ExecutorBackend",
    "GradientKind",
    "HardwareKind",
    "HardwareOptions",
    "OfflineGuard",
    "OfflineOutcome",
    "OfflinePolicy",
    "OriginOptions",
    "RefineConfig",
    "RefineResult",
    "device_backend",
    "executor_backend",
    "job_backend",
    "parameter_shift_estimate",
    "refine_on_device",
]
