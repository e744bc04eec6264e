"""qsimcirq backend: exact, multithreaded statevector simulation (the reference)."""

from __future__ import annotations

from dataclasses import dataclass

import cirq
import numpy as np
import qsimcirq

from quantum.backends.base import as_rows
from quantum.circuits import QnnCircuit


def resolvers(qc: QnnCircuit, values: np.ndarray) -> list[cirq.ParamResolver]:
    """One resolver per row of symbol values."""
    return [cirq.ParamResolver(dict(zip(qc.symbols, row.tolist(), strict=True))) for row in values]


def with_all_qubits(qc: QnnCircuit) -> cirq.Circuit:
    """The circuit with an identity on idle qubits, so simulators see the whole register."""
    idle = [q for q in qc.qubits if q not in qc.circuit.all_qubits()]
    return qc.circuit + cirq.Circuit(cirq.I(q) for q in idle) if idle else qc.circuit


@dataclass(frozen=True)
class QsimBackend:
    """Exact expectations / probabilities from qsimcirq (float32 internally).

    Attributes:
        threads: qsim worker threads (1 or 2 time the same for small circuits; facts.md).
    """

    threads: int = 1
    name: str = "qsim"

    def _simulator(self) -> qsimcirq.QSimSimulator:
        return qsimcirq.QSimSimulator(qsim_options=qsimcirq.QSimOptions(cpu_threads=self.threads))

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """Rows of symbol values ``[N, len(qc.symbols)]`` -> ``float64[N, qc.n_outputs]``."""
        values = as_rows(values, qc)
        if len(values) == 0:
            return np.zeros((0, qc.n_outputs))
        sim, circuit, params = self._simulator(), with_all_qubits(qc), resolvers(qc, values)
        if qc.readout == "z":
            obs = [cirq.Z(q) for q in qc.qubits]
            out = sim.simulate_expectation_values_sweep(circuit, obs, params, qubit_order=list(qc.qubits))
            return np.real(np.asarray(out)).astype(np.float64)
        results = sim.simulate_sweep(circuit, params, qubit_order=list(qc.qubits))
        return np.stack([np.abs(r.final_state_vector) ** 2 for r in results]).astype(np.float64)
