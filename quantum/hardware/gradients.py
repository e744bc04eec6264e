"""Gradients of a QNN's weights from shots: the parameter-shift rule and SPSA, batched through an executor.

Shift rules follow from each gate's spectrum: a single rotation ``exp(-iφP/2)`` has one frequency and the
two-term rule ``f' = ½[f(φ+π/2) − f(φ−π/2)]``; a controlled rotation has frequencies {½, 1} and the four-term
rule ``f' = c₊[f(φ+π/2) − f(φ−π/2)] − c₋[f(φ+3π/2) − f(φ−3π/2)]``, ``c± = (√2 ± 1)/(4√2)``.
All shifted circuits of a gradient go to the executor as one call, so they share jobs and run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cirq
import numpy as np
import sympy

from quantum.backends.base import Backend
from quantum.circuits import QnnCircuit
from quantum.hardware.shots import Estimate, ExecutorBackend

TWO_TERM = ((0.5, np.pi / 2), (-0.5, -np.pi / 2))
_CP = (np.sqrt(2) + 1) / (4 * np.sqrt(2))
_CM = (np.sqrt(2) - 1) / (4 * np.sqrt(2))
FOUR_TERM = ((_CP, np.pi / 2), (-_CP, -np.pi / 2), (-_CM, 3 * np.pi / 2), (_CM, -3 * np.pi / 2))


@dataclass(frozen=True)
class ShiftRule:
    """``∂f/∂θ = Σ_k coeff_k · f(θ + shift_k)`` for one weight."""

    terms: tuple[tuple[float, float], ...]


def _angle_and_rule(gate: cirq.Gate) -> tuple[object, tuple[tuple[float, float], ...]] | None:
    """The gate's rotation angle φ (sympy) and the shift rule in φ, or None for unknown gates."""
    controlled = isinstance(gate, cirq.ControlledGate) and gate.num_controls() == 1
    base = gate.sub_gate if controlled else gate
    if isinstance(base, cirq.Rx | cirq.Ry | cirq.Rz):
        angle = base._rads  # noqa: SLF001 - cirq exposes the angle only this way
    elif isinstance(base, cirq.XPowGate | cirq.YPowGate | cirq.ZPowGate):
        angle = sympy.pi * base.exponent
    else:
        return None
    return angle, FOUR_TERM if controlled else TWO_TERM


def shift_rules(qc: QnnCircuit) -> list[ShiftRule]:
    """One parameter-shift rule per weight symbol, in ``qc.weight_symbols`` order.

    Raises:
        ValueError: a weight appears in several gates, non-linearly, or in a gate without a known rule.
    """
    where: dict[sympy.Symbol, list[cirq.Operation]] = {s: [] for s in qc.weight_symbols}
    for op in qc.circuit.all_operations():
        for symbol in cirq.parameter_symbols(op):
            if symbol in where:
                where[symbol].append(op)
    rules = []
    for symbol, ops in where.items():
        if len(ops) != 1:
            raise ValueError(
                f"weight {symbol} appears in {len(ops)} gates; parameter shift needs exactly one"
            )
        found = _angle_and_rule(ops[0].gate)
        if found is None:
            raise ValueError(f"no parameter-shift rule for {ops[0]!r}; use rotations or controlled rotations")
        angle, terms = found
        slope = sympy.diff(angle, symbol)
        if slope.free_symbols or slope == 0:
            raise ValueError(f"{ops[0]!r}: the angle {angle} must be linear in {symbol}")
        c = float(slope)
        # Shifting φ by s shifts θ by s/c; the chain rule multiplies the derivative by c.
        rules.append(ShiftRule(tuple((coeff * c, shift / c) for coeff, shift in terms)))
    return rules


@dataclass(frozen=True)
class Jacobian:
    """``∂outputs/∂weights`` estimated from shots.

    Attributes:
        values: ``[n_outputs, n_weights]``.
        stderr: shot-noise standard error of each entry.
    """

    values: np.ndarray
    stderr: np.ndarray


def _evaluate(backend: Backend, qc: QnnCircuit, rows: np.ndarray) -> Estimate:
    """Shot estimates with standard errors from an ExecutorBackend; exact values (zero error) otherwise."""
    if isinstance(backend, ExecutorBackend):
        return backend.run(qc, rows)
    values = np.asarray(backend.evaluate(qc, rows), dtype=np.float64)
    return Estimate(values, np.zeros_like(values))


def parameter_shift_jacobian(
    backend: Backend, qc: QnnCircuit, weights: np.ndarray, *, inputs: np.ndarray | None = None
) -> Jacobian:
    """The Jacobian of a QNN's outputs in its weights by the parameter-shift rule, all shifts in one call.

    Args:
        backend: runs the shifted circuits: an :class:`ExecutorBackend` (shots, with standard errors) or any
            ``Backend`` (e.g. the exact JAX one, for checking the rule).
        qc: the circuit.
        weights: ``[n_weights]`` current angles.
        inputs: ``[n_inputs]`` input-symbol values (already feature-mapped), if the circuit has inputs.

    Returns:
        The Jacobian and its standard errors.
    """
    weights = np.asarray(weights, dtype=np.float64)
    inputs = np.zeros(0) if inputs is None else np.asarray(inputs, dtype=np.float64)
    rules = shift_rules(qc)
    rows, plan = [], []
    for index, rule in enumerate(rules):
        for coeff, shift in rule.terms:
            shifted = weights.copy()
            shifted[index] += shift
            rows.append(np.concatenate([inputs, shifted]))
            plan.append((index, coeff))
    est = _evaluate(backend, qc, np.array(rows))
    jac = np.zeros((qc.n_outputs, len(weights)))
    var = np.zeros_like(jac)
    for (index, coeff), value, err in zip(plan, est.values, est.stderr, strict=True):
        jac[:, index] += coeff * value
        var[:, index] += coeff**2 * err**2
    return Jacobian(jac, np.sqrt(var))


def spsa_gradient(
    backend: Backend,
    qc: QnnCircuit,
    weights: np.ndarray,
    loss: Callable[[np.ndarray], float],
    *,
    rng: np.random.Generator,
    perturbation: float = 0.1,
    inputs: np.ndarray | None = None,
) -> np.ndarray:
    """A simultaneous-perturbation estimate of ``∂loss(outputs)/∂weights``: two circuits whatever the size.

    Args:
        backend: runs the two perturbed circuits.
        qc: the circuit.
        weights: ``[n_weights]``.
        loss: maps the QNN outputs ``[n_outputs]`` to a scalar.
        rng: draws the ±1 perturbation directions.
        perturbation: the step ``c`` of the finite difference.
        inputs: input-symbol values, if any.

    Returns:
        ``[n_weights]`` gradient estimate (unbiased to O(c²) in expectation over directions).
    """
    weights = np.asarray(weights, dtype=np.float64)
    inputs = np.zeros(0) if inputs is None else np.asarray(inputs, dtype=np.float64)
    delta = rng.choice([-1.0, 1.0], size=weights.shape)
    rows = np.array(
        [
            np.concatenate([inputs, weights + perturbation * delta]),
            np.concatenate([inputs, weights - perturbation * delta]),
        ]
    )
    plus, minus = _evaluate(backend, qc, rows).values
    return (loss(plus) - loss(minus)) / (2 * perturbation) * delta
