"""Parameter-shift gradients for backends that can only evaluate circuits (qsim, samplers, hardware).

Every parametric gate occurrence j has its own parameter ``tau_j = J[j] @ symbols + offset_j`` (its cirq
exponent). For a gate ``U(tau) = sum_k exp(i(a_k tau + b_k)) Q_k`` an expectation is a trigonometric polynomial
in ``tau`` with frequencies ``|a_k - a_l|``; with R frequencies

    d f / d tau = sum_mu y_mu [f(tau + delta_mu) - f(tau - delta_mu)]      (2R evaluations)

(two terms for RX/RY/RZ, four for CRZ-like controlled rotations). The chain rule through ``J`` sums the
occurrences of a symbol. These functions are backend-agnostic: they produce shifted parameter rows and combine
the results, so a batching executor can submit all shifted circuits at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cirq
import numpy as np
import sympy

from quantum.circuits import QnnCircuit
from quantum.lowering import LoweredOp, lower_circuit

Evaluate = Callable[[QnnCircuit, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ShiftRule:
    """``df/dtau = sum_mu coefficients[mu] * (f(tau + shifts[mu]) - f(tau - shifts[mu]))``."""

    shifts: tuple[float, ...]
    coefficients: tuple[float, ...]


def shift_rule(op: LoweredOp) -> ShiftRule:
    """The exact parameter-shift rule of a lowered parametric gate (in units of its exponent)."""
    a = np.asarray(op.freqs)
    diffs = np.abs(a[:, None] - a[None, :]).ravel()
    freqs: list[float] = []
    for d in sorted(diffs):
        if d > 1e-9 and (not freqs or d - freqs[-1] > 1e-9):
            freqs.append(float(d))
    if not freqs:
        return ShiftRule((), ())
    r = len(freqs)
    omega = np.asarray(freqs)
    # Equidistant shifts are optimal for equidistant frequencies (RY: pi/2; CRZ: pi/2 and 3pi/2 in radians).
    shifts = (2 * np.arange(1, r + 1) - 1) * np.pi / (2 * r * omega[0])
    system = 2 * np.sin(omega[:, None] * shifts[None, :])
    coefficients = np.linalg.solve(system, omega)
    return ShiftRule(tuple(shifts.tolist()), tuple(coefficients.tolist()))


@dataclass(frozen=True)
class OccurrenceCircuit:
    """A circuit whose parametric gates each have their own symbol ``tau_j``.

    Attributes:
        qc: the rewritten circuit; its weight symbols are the ``tau_j`` (no input symbols).
        jacobian: ``float64[n_occurrences, n_symbols]``, d tau / d (original symbols, inputs then weights).
        offsets: ``float64[n_occurrences]``; ``tau = values @ jacobian.T + offsets``.
        rules: the shift rule of each occurrence.
    """

    qc: QnnCircuit
    jacobian: np.ndarray
    offsets: np.ndarray
    rules: tuple[ShiftRule, ...]

    def taus(self, values: np.ndarray) -> np.ndarray:
        """Occurrence parameters for rows of original symbol values ``[N, n_symbols]``."""
        return np.asarray(values, np.float64) @ self.jacobian.T + self.offsets


def _with_exponent(op: cirq.Operation, tau: sympy.Symbol) -> cirq.Operation:
    gate = op.gate
    if isinstance(gate, cirq.ControlledGate):
        sub = gate.sub_gate._with_exponent(tau)  # EigenGate's constructor-with-new-exponent hook
        new = cirq.ControlledGate(
            sub,
            num_controls=gate.num_controls(),
            control_values=gate.control_values,
            control_qid_shape=gate.control_qid_shape,
        )
        return new.on(*op.qubits)
    return gate._with_exponent(tau).on(*op.qubits)


def split_occurrences(qc: QnnCircuit) -> OccurrenceCircuit:
    """Rewrite ``qc`` so every parametric gate occurrence has its own symbol (see ``OccurrenceCircuit``)."""
    lowered = lower_circuit(qc.circuit, qc.qubits, qc.symbols)
    ops, taus, rows, offsets, rules = [], [], [], [], []
    for op in lowered.ops:
        if op.param is None:
            ops.append(op.source)
            continue
        tau = sympy.Symbol(f"tau_{len(taus)}")
        taus.append(tau)
        ops.append(_with_exponent(op.source, tau))
        row = np.zeros(len(qc.symbols))
        for i, c in op.param.terms:
            row[i] += c
        rows.append(row)
        offsets.append(op.param.const)
        rules.append(shift_rule(op))
    rewritten = QnnCircuit(
        circuit=cirq.Circuit(ops), qubits=qc.qubits, input_symbols=(), weight_symbols=tuple(taus), readout=qc.readout
    )
    jacobian = np.array(rows).reshape(len(taus), len(qc.symbols))
    return OccurrenceCircuit(rewritten, jacobian, np.asarray(offsets, np.float64), tuple(rules))


def shifted_rows(oc: OccurrenceCircuit, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All parameter-shifted rows for one binding ``tau[n_occ]``, and how to combine them.

    Returns:
        ``rows[S, n_occ]`` to evaluate, and ``weights[S, n_occ]`` with d f / d tau_j = sum_s weights[s, j] f(rows[s]).
    """
    rows, weights = [], []
    for j, rule in enumerate(oc.rules):
        for delta, coef in zip(rule.shifts, rule.coefficients, strict=True):
            for sign in (1.0, -1.0):
                row = np.array(tau, np.float64)
                row[j] += sign * delta
                w = np.zeros(len(oc.rules))
                w[j] = sign * coef
                rows.append(row)
                weights.append(w)
    n = len(oc.rules)
    return np.array(rows).reshape(-1, n), np.array(weights).reshape(-1, n)


def parameter_shift_terms(
    oc: OccurrenceCircuit, values: np.ndarray, symbol: int
) -> list[tuple[cirq.ParamResolver, float]]:
    """Resolvers of ``oc.qc.circuit`` and coefficients with d f / d symbol = sum coef * f(resolver).

    Args:
        oc: from ``split_occurrences``.
        values: one binding of the original symbols ``[n_symbols]`` (inputs then weights).
        symbol: index of the symbol to differentiate in the original symbol order.
    """
    rows, weights = shifted_rows(oc, oc.taus(np.asarray(values)[None])[0])
    coefs = weights @ oc.jacobian[:, symbol]
    return [
        (cirq.ParamResolver(dict(zip(oc.qc.weight_symbols, row.tolist(), strict=True))), float(c))
        for row, c in zip(rows, coefs, strict=True)
        if c != 0.0
    ]


def parameter_shift_jacobian(evaluate: Evaluate, oc: OccurrenceCircuit, values: np.ndarray) -> np.ndarray:
    """Exact Jacobian ``[N, n_outputs, n_symbols]`` of the outputs at rows ``values[N, n_symbols]``.

    All shifted circuits of all rows go to ``evaluate`` in one call (a backend's ``evaluate``).
    """
    values = np.asarray(values, np.float64)
    taus = oc.taus(values)
    blocks = [shifted_rows(oc, tau) for tau in taus]
    rows = np.concatenate([r for r, _ in blocks]) if blocks else np.zeros((0, len(oc.rules)))
    outputs = np.asarray(evaluate(oc.qc, rows)) if len(rows) else np.zeros((0, oc.qc.n_outputs))
    jac, start = [], 0
    for r, w in blocks:
        f = outputs[start : start + len(r)]
        start += len(r)
        jac.append(f.T @ w @ oc.jacobian)  # [m, n_occ] @ [n_occ, n_symbols]
    return np.stack(jac) if jac else np.zeros((0, oc.qc.n_outputs, values.shape[1]))
