"""QNN circuits as shot programs: bind symbols, measure the readout qubits, turn bits back into estimates.

:class:`ExecutorBackend` implements the quantum package's ``Backend`` protocol (``evaluate(qc, values)``) on
top of an :class:`~quantum.executor.Executor`, so a QNN can run on the emulator or a vendor unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cirq
import numpy as np

from quantum.circuits import QnnCircuit
from quantum.executor import Executor
from quantum.hardware.protocol import Program, ProgramResult
from quantum.mitigation.readout import bits_to_probabilities, mitigate_probabilities, z_expectations

READOUT_KEY = "q"


def measured_circuit(qc: QnnCircuit) -> cirq.Circuit:
    """The QNN circuit followed by a measurement of its readout qubits under key ``"q"``."""
    return qc.circuit + cirq.Circuit(cirq.measure(*qc.qubits, key=READOUT_KEY))


def programs_for(qc: QnnCircuit, values: np.ndarray, repetitions: int) -> list[Program]:
    """One program per row of ``values[N, len(qc.symbols)]`` (inputs then weights)."""
    circuit = measured_circuit(qc)
    names = [s.name for s in qc.symbols]
    return [Program(circuit, dict(zip(names, map(float, row), strict=True)), repetitions) for row in values]


def _binomial_stderr(counts: np.ndarray, shots: int) -> np.ndarray:
    p = (np.asarray(counts, dtype=float) + 0.5) / (shots + 1)
    return np.sqrt(p * (1 - p) / shots)


@dataclass(frozen=True)
class Estimate:
    """Shot estimates of a QNN's outputs.

    Attributes:
        values: ``[N, n_outputs]`` estimated ⟨Z_i⟩ or probabilities.
        stderr: their standard errors from shot noise (binomial), before mitigation.
    """

    values: np.ndarray
    stderr: np.ndarray


def estimate(qc: QnnCircuit, results: Sequence[ProgramResult], *, confusions_for=None) -> Estimate:
    """Turn measured bits into the QNN's readout.

    Args:
        qc: the circuit (its ``readout`` picks ⟨Z⟩ or probabilities).
        results: one per program, in order.
        confusions_for: optional ``qubits -> list of 2×2 confusion matrices`` (e.g.
            ``calibration.confusion_matrices``); when given, readout error is mitigated per program using the
            physical qubits that were actually read.
    """
    values, errors = [], []
    for result in results:
        bits = result.bits(READOUT_KEY)
        shots = len(bits)
        probs = bits_to_probabilities(bits)
        if confusions_for is not None:
            probs = mitigate_probabilities(probs, confusions_for(result.physical_qubits[READOUT_KEY]))
        if qc.readout == "z":
            values.append(z_expectations(probs))
            # ⟨Z⟩ = 1 − 2·p(1); the +½ smoothing keeps the error of an all-equal column from being zero.
            ones = bits.sum(axis=0)
            errors.append(2 * _binomial_stderr(ones, shots))
        else:
            values.append(probs)
            errors.append(_binomial_stderr(bits_to_probabilities(bits) * shots, shots))
    return Estimate(np.array(values), np.array(errors))


class ExecutorBackend:
    """A shot-based ``Backend``: each row of symbol values becomes one program run through the executor.

    Attributes:
        name: ``"executor"``.
    """

    name = "executor"

    def __init__(self, executor: Executor, *, repetitions: int = 1000, confusions_for=None) -> None:
        """Args:
        executor: runs the programs (batching, retries, budget, stats).
        repetitions: shots per program (Origin's cloud defaults to 1000).
        confusions_for: optional readout-mitigation source, see :func:`estimate`.
        """
        self.executor = executor
        self.repetitions = repetitions
        self.confusions_for = confusions_for

    def run(self, qc: QnnCircuit, values: np.ndarray) -> Estimate:
        """Estimates and standard errors for every row of ``values``."""
        values = np.atleast_2d(np.asarray(values, dtype=np.float64))
        if values.shape[1] != len(qc.symbols):
            raise ValueError(
                f"values of shape {values.shape}: expected [N, {len(qc.symbols)}] (inputs then weights)"
            )
        results = self.executor.run(programs_for(qc, values, self.repetitions))
        return estimate(qc, results, confusions_for=self.confusions_for)

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """``float64[N, qc.n_outputs]`` shot estimates (the ``Backend`` protocol)."""
        return self.run(qc, values).values
