"""A parameter-shift Jacobian with shot-noise standard errors, on the quantum package's shift rules.

The rules themselves (two terms per rotation, four per controlled rotation, chain rule over occurrences) are
``quantum.shift``'s; this adds the error bars that a shot budget needs, by propagating each shifted circuit's
binomial error through the same linear combination. For training, use ``quantum.ParameterShift`` or
``quantum.Spsa`` with an :class:`~quantum.hardware.shots.ExecutorBackend`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantum.backends import Backend
from quantum.circuits import QnnCircuit
from quantum.hardware.shots import Estimate, ExecutorBackend
from quantum.shift import shifted_rows, split_occurrences


@dataclass(frozen=True)
class Jacobian:
    """``∂outputs/∂weights`` estimated from shots.

    Attributes:
        values: ``[n_outputs, n_weights]``.
        stderr: shot-noise standard error of each entry (zero for exact backends).
    """

    values: np.ndarray
    stderr: np.ndarray


def parameter_shift_estimate(
    backend: Backend, qc: QnnCircuit, weights: np.ndarray, *, inputs: np.ndarray | None = None
) -> Jacobian:
    """The Jacobian in the weights at one input, every shifted circuit in one backend call.

    Args:
        backend: an :class:`ExecutorBackend` (shots, with standard errors) or any ``Backend`` (exact, zero error).
        qc: the circuit.
        weights: ``[n_weights]``.
        inputs: ``[n_inputs]`` input-symbol values (already feature-mapped), if the circuit has inputs.
    """
    inputs = np.zeros(len(qc.input_symbols)) if inputs is None else np.asarray(inputs, np.float64)
    values = np.concatenate([inputs, np.asarray(weights, np.float64)])
    oc = split_occurrences(qc)
    rows, combine = shifted_rows(oc, oc.taus(values[None])[0])
    if isinstance(backend, ExecutorBackend):
        est = backend.run(oc.qc, rows)
    else:
        f = np.asarray(backend.evaluate(oc.qc, rows), np.float64)
        est = Estimate(f, np.zeros_like(f))
    coefficients = (combine @ oc.jacobian)[:, len(inputs) :]  # [shifted rows, weights]
    jac = est.values.T @ coefficients
    var = (est.stderr**2).T @ coefficients**2  # independent shots per shifted circuit
    return Jacobian(jac, np.sqrt(var))
