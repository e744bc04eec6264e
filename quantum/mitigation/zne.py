"""Zero-noise extrapolation: amplify noise by unitary folding, extrapolate the expectation back to zero noise.

Fold circuits that are already native to the device (``DeviceEmulator.compile(...)`` first): a compiler would
merge ``U U† U`` back into ``U`` and undo the amplification.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import cirq
import numpy as np


def fold_global(circuit: cirq.AbstractCircuit, scale: int) -> cirq.Circuit:
    """``U (U† U)^k`` with ``scale = 2k + 1``: the same unitary, ``scale`` times the gates (and noise).

    Terminal measurements are kept once, at the end.

    Raises:
        ValueError: ``scale`` is not a positive odd integer, or the circuit measures mid-circuit.
    """
    if scale < 1 or scale % 2 == 0:
        raise ValueError(f"global folding needs an odd scale factor >= 1, got {scale}")
    if not circuit.are_all_measurements_terminal():
        raise ValueError("fold_global needs terminal measurements only")
    unitary = cirq.Circuit(circuit).copy()
    measurements = [op for op in unitary.all_operations() if cirq.is_measurement(op)]
    unitary = cirq.drop_empty_moments(
        cirq.Circuit(op for op in unitary.all_operations() if not cirq.is_measurement(op))
    )
    inverse = cirq.inverse(unitary)
    folded = unitary.copy()
    for _ in range((scale - 1) // 2):
        folded += inverse
        folded += unitary
    folded.append(cirq.Moment(measurements))
    return folded


def richardson_extrapolate(scales: Sequence[float], values: Sequence[float]) -> float:
    """The value at zero noise of the polynomial through all ``(scale, value)`` points (Lagrange at 0)."""
    x = np.asarray(scales, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(set(x.tolist())) != len(x):
        raise ValueError(f"scale factors must be distinct, got {list(scales)}")
    total = 0.0
    for i in range(len(x)):
        others = np.delete(x, i)
        total += y[i] * np.prod(others / (others - x[i]))
    return float(total)


def linear_extrapolate(scales: Sequence[float], values: Sequence[float]) -> float:
    """The intercept of the least-squares line through ``(scale, value)``."""
    slope, intercept = np.polyfit(np.asarray(scales, float), np.asarray(values, float), 1)
    return float(intercept)


def zne(
    expectation: Callable[[Sequence[cirq.Circuit]], Sequence[float]],
    circuit: cirq.AbstractCircuit,
    *,
    scales: Sequence[int] = (1, 3, 5),
    method: Literal["richardson", "linear"] = "richardson",
) -> tuple[float, list[float]]:
    """Estimate the zero-noise value of an expectation.

    Args:
        expectation: runs a list of circuits (e.g. through the Executor) and returns one expectation each.
        circuit: a device-native circuit with terminal measurements.
        scales: odd folding factors.
        method: ``richardson`` (polynomial through all points) or ``linear`` (least-squares line).

    Returns:
        The extrapolated value and the measured value at each scale.
    """
    folded = [fold_global(circuit, s) for s in scales]
    values = [float(v) for v in expectation(folded)]
    extrapolate = richardson_extrapolate if method == "richardson" else linear_extrapolate
    return extrapolate(scales, values), values
