"""Quantum circuits of QTHA, a differentiable JAX simulator, execution backends and the device path. Imports
nothing of ours.

Layers, lowest first (each imports only those before it; ``tests/quantum/test_layers.py`` checks it):
``errors``, ``qpu`` (the device vocabulary) → ``circuits``, ``lowering``, ``fusion``, ``kernels``,
``statevector``, ``shift``, ``mitigation`` (circuits and their simulation) → ``backends`` → ``gradients``, ``qnn``
→ ``emulator``, ``executor`` (device stand-in and job runner) → ``hardware`` (training on a device, the factory).
This module re-exports each layer's public names; nothing under ``quantum/`` imports it.

Example:
    >>> from quantum import CircuitSpec, make_qnn, init_weights
    >>> spec = CircuitSpec(n_qubits=4, n_layers=2)
    >>> qnn = make_qnn(spec)
    >>> out = qnn(jnp.zeros((8, spec.n_inputs)), init_weights(spec, jax.random.key(0)))  # [8, 4]
"""

from quantum.backends import (
    MEASUREMENT_KEY,
    Backend,
    DifferentiableBackend,
    JaxBackend,
    QsimBackend,
    SamplerBackend,
    estimate,
    standard_error,
)
from quantum.backends.origin import OriginLocalSampler, OriginQCloudBackend, OriginRunOptions
from quantum.backends.vendor import sampler_from_import_path
from quantum.circuits import CircuitSpec, QnnCircuit, build_circuit, init_weights
from quantum.emulator import (
    Calibration,
    DensityMatrixEngine,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
    QubitCalibration,
    compile_for_device,
)
from quantum.errors import (
    CircuitTooLargeError,
    NativeKernelError,
    NonlinearParameterError,
    QuantumSpecError,
    UnresolvedSymbolError,
    UnsupportedGateError,
)
from quantum.executor import (
    ExecutionStats,
    Executor,
    ExecutorConfig,
    ExecutorSampler,
    SamplerJobBackend,
    SpendLimit,
)
from quantum.gradients import GradientRule, ParameterShift, Spsa, callback_qnn
from quantum.hardware import (
    OFFLINE_POLICIES,
    DeviceQnn,
    DeviceSetup,
    ExecutorBackend,
    HardwareOptions,
    OfflineGuard,
    OfflineOutcome,
    OfflinePolicy,
    OriginOptions,
    RefineConfig,
    RefineResult,
    device_backend,
    executor_backend,
    job_backend,
    parameter_shift_estimate,
    refine_on_device,
)
from quantum.lowering import SUPPORTED_GATES
from quantum.mitigation import fold_global, mitigate_probabilities, mitigated_z, zne
from quantum.qnn import feature_map, make_qnn
from quantum.qpu import (
    DeviceClock,
    DeviceOfflineError,
    DevicePricing,
    DeviceValidationError,
    JobBackend,
    JobFailedError,
    JobState,
    JobStatus,
    JobTooLargeError,
    Program,
    ProgramResult,
    RealDeviceClock,
    RetriesExhaustedError,
    SimulatedDeviceClock,
    SpendLimitError,
    TransientBackendError,
)
from quantum.shift import (
    OccurrenceCircuit,
    ShiftRule,
    parameter_shift_jacobian,
    parameter_shift_terms,
    shift_rule,
    shifted_rows,
    split_occurrences,
)
from quantum.statevector import FINAL_STATE_NAME, QnnFunction, SimulatorOptions, compile_circuit

__all__ = [
    # circuits and simulation
    "FINAL_STATE_NAME",
    "SUPPORTED_GATES",
    "CircuitSpec",
    "CircuitTooLargeError",
    "NonlinearParameterError",
    "OccurrenceCircuit",
    "QnnCircuit",
    "QnnFunction",
    "QuantumSpecError",
    "NativeKernelError",
    "ShiftRule",
    "SimulatorOptions",
    "UnresolvedSymbolError",
    "UnsupportedGateError",
    "build_circuit",
    "compile_circuit",
    "init_weights",
    "parameter_shift_jacobian",
    "parameter_shift_terms",
    "shift_rule",
    "shifted_rows",
    "split_occurrences",
    # backends and gradients
    "MEASUREMENT_KEY",
    "Backend",
    "DifferentiableBackend",
    "GradientRule",
    "JaxBackend",
    "ParameterShift",
    "QsimBackend",
    "SamplerBackend",
    "Spsa",
    "callback_qnn",
    "estimate",
    "feature_map",
    "make_qnn",
    "standard_error",
    # the device vocabulary
    "DeviceClock",
    "DeviceOfflineError",
    "DevicePricing",
    "DeviceValidationError",
    "JobBackend",
    "JobFailedError",
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
    # emulator, executor, vendors, mitigation
    "Calibration",
    "DensityMatrixEngine",
    "DeviceEmulator",
    "DeviceSpec",
    "EmulatorConfig",
    "ExecutionStats",
    "Executor",
    "ExecutorConfig",
    "ExecutorSampler",
    "FailureModel",
    "LatencyModel",
    "OriginLocalSampler",
    "OriginQCloudBackend",
    "OriginRunOptions",
    "QubitCalibration",
    "SamplerJobBackend",
    "SpendLimit",
    "compile_for_device",
    "fold_global",
    "mitigate_probabilities",
    "mitigated_z",
    "sampler_from_import_path",
    "zne",
    # training on a device, built from configuration
    "OFFLINE_POLICIES",
    "DeviceQnn",
    "DeviceSetup",
    "ExecutorBackend",
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
