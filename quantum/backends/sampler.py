"""Any ``cirq.Sampler`` as a backend: estimates from measured shots (the road to hardware)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cirq
import numpy as np

from quantum.backends.base import as_rows
from quantum.backends.qsim import resolvers, with_all_qubits
from quantum.circuits import QnnCircuit

MEASUREMENT_KEY = "qnn"


def estimate(bits: np.ndarray, readout: str) -> np.ndarray:
    """Estimate the readout from measured bits ``[shots, n]`` (big-endian): <Z_i> or basis frequencies."""
    bits = np.asarray(bits, dtype=np.int64)
    if readout == "z":
        return 1.0 - 2.0 * bits.mean(axis=0)
    n = bits.shape[1]
    index = bits @ (1 << np.arange(n)[::-1])
    return np.bincount(index, minlength=2**n) / len(bits)


def standard_error(values: np.ndarray, readout: str, shots: int) -> np.ndarray:
    """Standard error of ``estimate`` at the exact (or estimated) values: binomial per output."""
    values = np.asarray(values, np.float64)
    var = 1.0 - values**2 if readout == "z" else values * (1.0 - values)
    return np.sqrt(np.clip(var, 0.0, None) / shots)


@dataclass(frozen=True)
class SamplerBackend:
    """Shot estimates from a ``cirq.Sampler`` (default: ``cirq.Simulator`` seeded with ``seed``).

    Attributes:
        repetitions: shots per circuit.
        sampler: the sampler (a hardware service's sampler, the emulator, ...); None builds a seeded
            ``cirq.Simulator``.
        seed: seed of the default sampler.
    """

    repetitions: int = 1000
    sampler: cirq.Sampler | None = field(default=None, compare=False)
    seed: int | None = 0
    name: str = "sampler"

    def measured(self, qc: QnnCircuit) -> cirq.Circuit:
        """The circuit with every qubit measured under ``MEASUREMENT_KEY`` in readout order."""
        return with_all_qubits(qc) + cirq.measure(*qc.qubits, key=MEASUREMENT_KEY)

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """Rows of symbol values ``[N, len(qc.symbols)]`` -> estimates ``float64[N, qc.n_outputs]``."""
        values = as_rows(values, qc)
        if len(values) == 0:
            return np.zeros((0, qc.n_outputs))
        sampler = self.sampler if self.sampler is not None else cirq.Simulator(seed=self.seed)
        results = sampler.run_sweep(self.measured(qc), resolvers(qc, values), repetitions=self.repetitions)
        return np.stack([estimate(r.measurements[MEASUREMENT_KEY], qc.readout) for r in results])
