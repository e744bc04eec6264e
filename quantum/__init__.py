"""Quantum circuits of QTHA, a differentiable JAX simulator and execution backends. Imports nothing of ours.

Example:
    >>> from quantum import CircuitSpec, make_qnn, init_weights
    >>> spec = CircuitSpec(n_qubits=4, n_layers=2)
    >>> qnn = make_qnn(spec)
    >>> out = qnn(jnp.zeros((8, spec.n_inputs)), init_weights(spec, jax.random.key(0)))  # [8, 4]
"""

from quantum.backends import Backend, DifferentiableBackend, JaxBackend
from quantum.circuits import CircuitSpec, QnnCircuit, build_circuit, init_weights
from quantum.errors import (
    CircuitTooLargeError,
    NonlinearParameterError,
    QuantumSpecError,
    UnresolvedSymbolError,
    UnsupportedGateError,
)
from quantum.lowering import SUPPORTED_GATES
from quantum.qnn import feature_map, make_qnn
from quantum.statevector import QnnFunction, SimulatorOptions, compile_circuit

__all__ = [
    "SUPPORTED_GATES",
    "Backend",
    "CircuitSpec",
    "CircuitTooLargeError",
    "DifferentiableBackend",
    "JaxBackend",
    "NonlinearParameterError",
    "QnnCircuit",
    "QnnFunction",
    "QuantumSpecError",
    "SimulatorOptions",
    "UnresolvedSymbolError",
    "UnsupportedGateError",
    "build_circuit",
    "compile_circuit",
    "feature_map",
    "init_weights",
    "make_qnn",
]
