"""``make_qnn``: a circuit on a backend as one pure JAX function ``(inputs, weights) -> outputs``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantum.backends import Backend, DifferentiableBackend, JaxBackend
from quantum.circuits import CircuitSpec, QnnCircuit, build_circuit
from quantum.gradients import GradientRule, ParameterShift, callback_qnn
from quantum.statevector import QnnFunction


def feature_map(qc: QnnCircuit, inputs: jax.Array) -> jax.Array:
    """Map raw features to input-symbol values: pi*tanh(h) for angle encoding, identity otherwise."""
    return jnp.pi * jnp.tanh(inputs) if qc.feature_map == "pi_tanh" else inputs


def make_qnn(
    circuit: CircuitSpec | QnnCircuit, *, backend: Backend | None = None, gradient: GradientRule | None = None
) -> QnnFunction:
    """Build the QNN ``qnn(inputs[B, n_inputs], weights[n_weights]) -> float[B, n_outputs]``.

    ``inputs`` are raw features (the circuit's feature map, e.g. pi*tanh, is applied inside). The result is
    jitted, vmap-able and differentiable in both arguments on every backend.

    Args:
        circuit: a spec (built with ``build_circuit``) or a circuit record.
        backend: where circuits run; default ``JaxBackend()`` (complex64 statevector, adjoint gradients).
        gradient: for backends without ``compile`` (qsim, samplers): ``ParameterShift()`` (default, exact) or
            ``Spsa(seed=...)``. Ignored by differentiable backends.

    Returns:
        The QNN function.

    Example:
        >>> qnn = make_qnn(CircuitSpec(n_qubits=2, n_layers=1))
        >>> qnn(jnp.zeros((1, 2)), jnp.zeros(8)).tolist()
        [[1.0, 1.0]]
    """
    qc = build_circuit(circuit) if isinstance(circuit, CircuitSpec) else circuit
    backend = JaxBackend() if backend is None else backend
    if isinstance(backend, DifferentiableBackend):
        simulate = backend.compile(qc)
    else:
        simulate = callback_qnn(qc, backend, ParameterShift() if gradient is None else gradient)

    def qnn(inputs: jax.Array, weights: jax.Array) -> jax.Array:
        return simulate(feature_map(qc, jnp.asarray(inputs)), weights)

    return jax.jit(qnn)
