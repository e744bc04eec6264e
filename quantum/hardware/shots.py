"""QNN circuits as shot programs on an executor, with optional readout-error mitigation.

:class:`ExecutorBackend` implements the quantum package's ``Backend`` protocol (``evaluate(qc, values)``), so
the quantum package's gradient rules (``ParameterShift``, ``Spsa``, ``callback_qnn``) run on the emulator or a
vendor unchanged. Unlike ``SamplerBackend`` over an ``ExecutorSampler`` it knows which physical qubits were read,
which readout mitigation needs, and it reports standard errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cirq
import numpy as np

from quantum.backends import MEASUREMENT_KEY, SamplerBackend, estimate, standard_error
from quantum.backends.base import as_rows
from quantum.circuits import QnnCircuit
from quantum.executor import Executor
from quantum.mitigation.readout import bits_to_probabilities, mitigate_probabilities, z_expectations
from quantum.qpu.protocol import Program, ProgramResult

ConfusionSource = Callable[[Sequence[cirq.Qid]], list[np.ndarray]]
"""Physical qubits → their 2×2 confusion matrices, e.g. ``Calibration.confusion_matrices``."""


def programs_for(qc: QnnCircuit, values: np.ndarray, repetitions: int) -> list[Program]:
    """One program per row of ``values[N, len(qc.symbols)]`` (inputs then weights), every qubit measured."""
    circuit = SamplerBackend().measured(qc)
    names = [s.name for s in qc.symbols]
    return [
        Program(circuit, cirq.ParamResolver(dict(zip(names, map(float, row), strict=True))), repetitions)
        for row in values
    ]


@dataclass(frozen=True)
class Estimate:
    """Shot estimates of a QNN's outputs.

    Attributes:
        values: ``[N, n_outputs]`` estimated ⟨Z_i⟩ or probabilities.
        stderr: their binomial standard errors from shot noise (before mitigation, which widens them).
    """

    values: np.ndarray
    stderr: np.ndarray


def _smoothed(bits: np.ndarray, readout: str) -> np.ndarray:
    """Raw estimates shrunk by half a count, so an all-equal column does not claim a zero standard error."""
    shots = len(bits)
    raw = estimate(bits, readout)
    if readout == "z":  # ⟨Z⟩ = 1 − 2 p(1), with p(1) → (k + ½)/(shots + 1)
        return 1.0 - 2.0 * ((1.0 - raw) / 2.0 * shots + 0.5) / (shots + 1)
    return (raw * shots + 0.5) / (shots + 1)


def estimate_results(
    qc: QnnCircuit, results: Sequence[ProgramResult], *, confusions_for: ConfusionSource | None = None
) -> Estimate:
    """Turn measured bits into the QNN's readout, mitigating readout error if ``confusions_for`` is given."""
    values, errors = [], []
    for result in results:
        bits = result.bits(MEASUREMENT_KEY)
        if confusions_for is None:
            value = estimate(bits, qc.readout)
        else:
            probs = mitigate_probabilities(
                bits_to_probabilities(bits), confusions_for(result.physical_qubits[MEASUREMENT_KEY])
            )
            value = z_expectations(probs) if qc.readout == "z" else probs
        values.append(value)
        errors.append(standard_error(_smoothed(bits, qc.readout), qc.readout, len(bits)))
    return Estimate(np.array(values), np.array(errors))


class ExecutorBackend:
    """A shot-based ``Backend``: each row of symbol values becomes one program run through the executor.

    Attributes:
        name: ``"executor"``.
        executor: runs the programs (batching, retries, spend limit, stats).
        repetitions: shots per program (Origin's cloud defaults to 1000).
        confusions_for: optional readout-mitigation source, e.g. ``emulator.calibration.confusion_matrices``.
    """

    name = "executor"

    def __init__(
        self, executor: Executor, *, repetitions: int = 1000, confusions_for: ConfusionSource | None = None
    ) -> None:
        """Wrap ``executor`` (see the class attributes)."""
        self.executor = executor
        self.repetitions = repetitions
        self.confusions_for = confusions_for

    def run(self, qc: QnnCircuit, values: np.ndarray) -> Estimate:
        """Estimates and standard errors for every row of ``values[N, len(qc.symbols)]``."""
        values = as_rows(values, qc)
        if len(values) == 0:
            return Estimate(np.zeros((0, qc.n_outputs)), np.zeros((0, qc.n_outputs)))
        results = self.executor.run(programs_for(qc, values, self.repetitions))
        return estimate_results(qc, results, confusions_for=self.confusions_for)

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """``float64[N, qc.n_outputs]`` shot estimates (the ``Backend`` protocol)."""
        return self.run(qc, values).values
