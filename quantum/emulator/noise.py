"""The calibration as a noise model: gate depolarization, thermal relaxation per moment, classical readout flips.

Gate and idle noise are inserted as explicit channel operations, so the same noisy circuit can be run by any
simulator (qsim's noisy trajectories, cirq's density-matrix simulator) and compared exactly. Readout error is
applied to the sampled bits, as on hardware, where it is a classical error of the discriminator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ThermalRelaxation(cirq.Gate):
    """Amplitude damping ``gamma`` followed by pure dephasing ``lam``, as one channel.

    One channel instead of two per qubit and time step halves the channel count that trajectory simulators
    sample. Kraus operators: ``diag(1, √((1-γ)(1-λ)))``, ``[[0, √γ], [0, 0]]`` and ``diag(0, √(λ(1-γ)))``
    (the fourth product vanishes). Hashable, so engines can cache its superoperator.
    """

    gamma: float
    lam: float

    def _num_qubits_(self) -> int:
        return 1

    def _kraus_(self) -> tuple[np.ndarray, ...]:
        g, lam = self.gamma, self.lam
        return (
            np.diag([1.0, np.sqrt((1 - g) * (1 - lam))]),
            np.array([[0.0, np.sqrt(g)], [0.0, 0.0]]),
            np.diag([0.0, np.sqrt(lam * (1 - g))]),
        )

    def _has_kraus_(self) -> bool:
        return True

    def _circuit_diagram_info_(self, args: cirq.CircuitDiagramInfoArgs) -> str:
        return f"T(γ={self.gamma:.2g},λ={self.lam:.2g})"


def _relaxation(q: cirq.Qid, duration: float, calibration: Calibration) -> list[cirq.Operation]:
    """T1 amplitude damping and T_φ dephasing (1/T2 = 1/(2 T1) + 1/T_φ) over ``duration``, as one channel."""
    cal = calibration.qubits[q]
    gamma = float(1.0 - np.exp(-duration / cal.t1_s))
    pure_dephasing_rate = 1.0 / cal.t2_s - 0.5 / cal.t1_s
    # Dephasing by λ scales coherences by √(1-λ); T_φ decay over t scales them by exp(-t/T_φ).
    lam = float(1.0 - np.exp(-2.0 * duration * pure_dephasing_rate))
    if gamma <= 0 and lam <= 1e-15:
        return []
    return [ThermalRelaxation(gamma, max(lam, 0.0)).on(q)]


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
            out.append(cirq.Moment(idle_noise))
    return out


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
