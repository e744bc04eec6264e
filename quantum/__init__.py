"""Quantum circuits of QTHA, a differentiable JAX simulator and execution backends. Imports nothing of ours.

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
from quantum.circuits import CircuitSpec, QnnCircuit, build_circuit, init_weights
from quantum.errors import (
    CircuitTooLargeError,
    NonlinearParameterError,
    QuantumSpecError,
    UnresolvedSymbolError,
    UnsupportedGateError,
)
from quantum.gradients import GradientRule, ParameterShift, Spsa, callback_qnn
from quantum.lowering import SUPPORTED_GATES
from quantum.qnn import feature_map, make_qnn
from quantum.shift import (
    OccurrenceCircuit,
    ShiftRule,
    parameter_shift_jacobian,
    parameter_shift_terms,
    shift_rule,
    shifted_rows,
    split_occurrences,
)
from quantum.statevector import QnnFunction, SimulatorOptions, compile_circuit

__all__ = [
    "MEASUREMENT_KEY",
    "SUPPORTED_GATES",
    "Backend",
    "CircuitSpec",
    "CircuitTooLargeError",
    "DifferentiableBackend",
    "GradientRule",
    "JaxBackend",
    "NonlinearParameterError",
    "OccurrenceCircuit",
    "ParameterShift",
    "QnnCircuit",
    "QsimBackend",
    "QnnFunction",
    "QuantumSpecError",
    "SamplerBackend",
    "ShiftRule",
    "SimulatorOptions",
    "Spsa",
    "UnresolvedSymbolError",
    "UnsupportedGateError",
    "build_circuit",
    "compile_circuit",
    "callback_qnn",
    "estimate",
    "feature_map",
    "init_weights",
    "make_qnn",
    "parameter_shift_jacobian",
    "parameter_shift_terms",
    "shift_rule",
    "shifted_rows",
    "split_occurrences",
    "standard_error",
]

# --- The hardware path (issue #7): device emulator, executor, mitigation, vendor adapters, training on shots ----
# A separate block so the owners of the two halves can edit without conflicts.
from quantum.backends.origin import OriginLocalSampler, OriginQCloudBackend  # noqa: E402
from quantum.backends.vendor import sampler_from_import_path  # noqa: E402
from quantum.emulator import (  # noqa: E402
    Calibration,
    CostModel,
    DensityMatrixEngine,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
    QubitCalibration,
    compile_for_device,
)
from quantum.executor import (  # noqa: E402
    Budget,
    ExecutionStats,
    Executor,
    ExecutorConfig,
    ExecutorSampler,
    SamplerJobBackend,
)
from quantum.hardware import (  # noqa: E402
    BudgetExhaustedError,
    DeviceOfflineError,
    DeviceValidationError,
    FakeClock,
    JobBackend,
    JobFailedError,
    JobState,
    JobStatus,
    JobTooLargeError,
    Program,
    ProgramResult,
    RealClock,
    RetriesExhaustedError,
    TransientBackendError,
)
from quantum.hardware.factory import executor_backend, job_backend  # noqa: E402
from quantum.hardware.gradients import parameter_shift_estimate  # noqa: E402
from quantum.hardware.loop import DeviceQnn, RefineConfig, RefineResult, refine_on_device  # noqa: E402
from quantum.hardware.shots import ExecutorBackend  # noqa: E402
from quantum.mitigation import fold_global, mitigate_probabilities, mitigated_z, zne  # noqa: E402

__all__ += [
    "Budget",
    "BudgetExhaustedError",
    "Calibration",
    "CostModel",
    "DensityMatrixEngine",
    "DeviceEmulator",
    "DeviceOfflineError",
    "DeviceQnn",
    "DeviceSpec",
    "DeviceValidationError",
    "EmulatorConfig",
    "ExecutionStats",
    "Executor",
    "ExecutorBackend",
    "ExecutorConfig",
    "ExecutorSampler",
    "FailureModel",
    "FakeClock",
    "JobBackend",
    "JobFailedError",
    "JobState",
    "JobStatus",
    "JobTooLargeError",
    "LatencyModel",
    "OriginLocalSampler",
    "OriginQCloudBackend",
    "Program",
    "ProgramResult",
    "QubitCalibration",
    "RealClock",
    "RefineConfig",
    "RefineResult",
    "RetriesExhaustedError",
    "SamplerJobBackend",
    "TransientBackendError",
    "compile_for_device",
    "executor_backend",
    "fold_global",
    "job_backend",
    "mitigate_probabilities",
    "mitigated_z",
    "parameter_shift_estimate",
    "refine_on_device",
    "sampler_from_import_path",
    "zne",
]
