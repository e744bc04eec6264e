"""The calibration as a noise model: gate depolarization, thermal relaxation per moment, classical readout flips.

Gate and idle noise are inserted as explicit channel operations, so the same noisy circuit can be run by any
simulator (qsim's noisy trajectories, cirq's density-matrix simulator) and compared exactly. Readout error is
applied to the sampled bits, as on hardware, where it is a classical error of the discriminator.
"""

from __future__ import annotations

from collections.abc import Sequence

import cirq
import numpy as np

from quantum.emulator.calibration import Calibration
from quantum.emulator.device import DeviceSpec, coupler_key
from quantum.mitigation.readout import apply_per_qubit


def is_virtual_z(op: cirq.Operation) -> bool:
    """True for a PhasedXZ with no X part: a Z rotation, done in software by shifting later pulses' phases.

    Superconducting devices implement Z rotations as frame changes ("virtual Z"): they take no time and add no
    error, so the noise model gives them neither.
    """
    gate = op.gate
    return (
        isinstance(gate, cirq.PhasedXZGate)
        and not cirq.is_parameterized(gate.x_exponent)
        and gate.x_exponent == 0
    )


def _moment_duration(moment: cirq.Moment, device: DeviceSpec) -> float:
    longest = 0.0
    for op in moment:
        if isinstance(op.gate, cirq.MeasurementGate | cirq.GlobalPhaseGate) or is_virtual_z(op):
            continue
        longest = max(longest, device.two_qubit_gate_s if len(op.qubits) == 2 else device.single_qubit_gate_s)
    return longest


def _relaxation(q: cirq.Qid, duration: float, calibration: Calibration) -> list[cirq.Operation]:
    """Amplitude damping (T1) and pure dephasing (T_φ, with 1/T2 = 1/(2 T1) + 1/T_φ) over ``duration``."""
    cal = calibration.qubits[q]
    ops: list[cirq.Operation] = []
    gamma = 1.0 - np.exp(-duration / cal.t1_s)
    if gamma > 0:
        ops.append(cirq.amplitude_damp(gamma).on(q))
    pure_dephasing_rate = 1.0 / cal.t2_s - 0.5 / cal.t1_s
    # phase_damp(λ) scales coherences by sqrt(1-λ); T_φ decay over t scales them by exp(-t/T_φ).
    lam = 1.0 - np.exp(-2.0 * duration * pure_dephasing_rate)
    if lam > 1e-15:
        ops.append(cirq.phase_damp(lam).on(q))
    return ops


def add_noise(circuit: cirq.AbstractCircuit, device: DeviceSpec, calibration: Calibration) -> cirq.Circuit:
    """Insert the calibration's gate and idle noise after every moment of a compiled circuit.

    Each one-qubit gate is followed by a depolarizing channel of that qubit's error, each two-qubit gate by a
    two-qubit depolarizing channel of that coupler's error, and every active qubit (busy or idle) by thermal
    relaxation for the moment's duration. Z rotations are virtual (free and exact, see :func:`is_virtual_z`). Zero-probability channels are left out, so an ideal calibration
    returns a unitary circuit.

    Args:
        circuit: a compiled circuit on device qubits with concrete (resolved) parameters.
        device: gate durations.
        calibration: error figures.

    Returns:
        A new circuit with channel operations in their own moments after each gate moment.
    """
    qubits = sorted(circuit.all_qubits())
    out = cirq.Circuit()
    for moment in circuit:
        out.append(moment, strategy=cirq.InsertStrategy.NEW_THEN_INLINE)
        noise: list[cirq.Operation] = []
        for op in moment:
            if isinstance(op.gate, cirq.MeasurementGate | cirq.GlobalPhaseGate) or is_virtual_z(op):
                continue
            if len(op.qubits) == 1:
                p = calibration.qubits[op.qubits[0]].single_qubit_error
                if p > 0:
                    noise.append(cirq.depolarize(p).on(*op.qubits))
            else:
                p = calibration.two_qubit_errors.get(coupler_key(*op.qubits), 0.0)
                if p > 0:
                    noise.append(cirq.depolarize(p, n_qubits=2).on(*op.qubits))
        duration = _moment_duration(moment, device)
        idle_noise = (
            [c for q in qubits for c in _relaxation(q, duration, calibration)] if duration > 0 else []
        )
        # Two moments: a qubit can carry a depolarizing and a relaxation channel in the same step.
        if noise:
            out.append(cirq.Moment(noise))
        if idle_noise:
            for layer in _layers(idle_noise):
                out.append(cirq.Moment(layer))
    return out


def _layers(ops: Sequence[cirq.Operation]) -> list[list[cirq.Operation]]:
    """Split operations into lists with at most one operation per qubit."""
    layers: list[list[cirq.Operation]] = []
    used: list[set[cirq.Qid]] = []
    for op in ops:
        for layer, qs in zip(layers, used, strict=True):
            if not qs.intersection(op.qubits):
                layer.append(op)
                qs.update(op.qubits)
                break
        else:
            layers.append([op])
            used.append(set(op.qubits))
    return layers


def apply_readout_error(
    bits: np.ndarray, qubits: Sequence[cirq.Qid], calibration: Calibration, rng: np.random.Generator
) -> np.ndarray:
    """Flip sampled bits with the calibration's asymmetric readout errors.

    Args:
        bits: ``[repetitions, n]`` sampled bits (0/1).
        qubits: the physical qubit of each column.
        calibration: ``readout_p01`` / ``readout_p10`` per qubit.
        rng: draws the flips.

    Returns:
        A new array of the same shape with the flips applied.
    """
    bits = np.asarray(bits, dtype=np.int8)
    p01 = np.array([calibration.qubits[q].readout_p01 for q in qubits])
    p10 = np.array([calibration.qubits[q].readout_p10 for q in qubits])
    flip_probability = np.where(bits == 1, p10, p01)
    flips = rng.random(bits.shape) < flip_probability
    return (bits ^ flips).astype(np.int8)


def apply_confusion(probabilities: np.ndarray, confusions: Sequence[np.ndarray]) -> np.ndarray:
    """The distribution of read bits given the true distribution (tensor-product confusion, big-endian bits).

    Args:
        probabilities: ``[2**n]`` over bitstrings, qubit 0 the most significant bit (cirq's convention).
        confusions: per qubit ``M[read, true]``.
    """
    return apply_per_qubit(confusions, probabilities)
