"""A small, fast density-matrix engine for the emulator's noisy circuits.

cirq's DensityMatrixSimulator pays Python overhead per operation that dominates on the emulator's circuits (a
channel after every gate and idle step). This engine applies each operation's Kraus operators to a dense
density matrix with two tensor contractions and samples every terminal measurement from the final diagonal at
once, so correlations between keys are kept. It is exact, and checked against cirq's simulator in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import cirq
import numpy as np


def _superoperator(gate: cirq.Gate, cache: dict[cirq.Gate, np.ndarray]) -> np.ndarray:
    """``S = Σ K ⊗ K*`` as a tensor ``(2,)*4k``: axes (row out, col out, row in, col in)."""
    # cirq's protocol calls cost more than the contraction; noise channels repeat across programs, so cache.
    found = cache.get(gate)
    if found is None:
        kraus = (cirq.unitary(gate),) if cirq.has_unitary(gate) else cirq.kraus(gate)
        k = cirq.num_qubits(gate)
        found = np.sum(
            [np.kron(m, m.conj()) for m in (np.asarray(m, dtype=np.complex128) for m in kraus)], axis=0
        )
        # kron(K, K*) has index order (row out, col out | row in, col in) per 2^k block.
        found = np.asarray(found).reshape((2,) * (4 * k))
        if len(cache) < 4096:
            cache[gate] = found
    return found


def final_density_matrix(
    circuit: cirq.AbstractCircuit, qubits: Sequence[cirq.Qid], *, cache: dict | None = None
) -> np.ndarray:
    """The density matrix ``[2**n, 2**n]`` after the circuit's non-measurement operations (big-endian ``qubits``).

    Args:
        circuit: resolved circuit, possibly with noise channels.
        qubits: the order of the tensor factors.
        cache: gate → superoperator, reused between calls (pass the same dict to share it).
    """
    cache = {} if cache is None else cache
    n = len(qubits)
    index = {q: i for i, q in enumerate(qubits)}
    rho = np.zeros((2,) * (2 * n), dtype=np.complex128)
    rho[(0,) * (2 * n)] = 1.0
    # Runs of one-qubit operations (gates and their noise) are fused into one 4×4 superoperator per qubit, which
    # cuts the number of contractions several-fold on the emulator's noise-heavy circuits.
    pending: dict[int, np.ndarray] = {}

    def apply(superop: np.ndarray, targets: list[int]) -> np.ndarray:
        k = len(targets)
        axes = targets + [t + n for t in targets]
        moved = np.tensordot(superop, rho, axes=(list(range(2 * k, 4 * k)), axes))
        return np.moveaxis(moved, list(range(2 * k)), axes)

    for op in circuit.all_operations():
        if isinstance(op.gate, cirq.MeasurementGate | cirq.GlobalPhaseGate | cirq.IdentityGate):
            continue
        if op.gate is None:
            raise ValueError(f"{op!r} has no gate; the engine simulates gate operations only")
        superop = _superoperator(op.gate, cache)
        targets = [index[q] for q in op.qubits]
        if len(targets) == 1:
            t = targets[0]
            matrix = superop.reshape(4, 4)
            pending[t] = matrix if t not in pending else matrix @ pending[t]
            continue
        for t in targets:
            if t in pending:
                rho = apply(pending.pop(t).reshape(2, 2, 2, 2), [t])
        rho = apply(superop, targets)
    for t, matrix in pending.items():
        rho = apply(matrix.reshape(2, 2, 2, 2), [t])
    return rho.reshape(2**n, 2**n)


class DensityMatrixEngine(cirq.Sampler):
    """Exact noisy simulation (density matrix) with terminal measurements sampled from the final diagonal.

    Args:
        seed: seeds the shot sampling.
    """

    def __init__(self, seed: int | None = None, *, cache: dict | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._cache = {} if cache is None else cache

    def run_sweep(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """Simulate each resolved circuit once and sample ``repetitions`` shots.

        Raises:
            ValueError: a measurement is followed by an operation on its qubits (mid-circuit measurement).
        """
        out = []
        for resolver in cirq.to_resolvers(params):
            circuit = cirq.resolve_parameters(program, resolver)
            if not circuit.are_all_measurements_terminal():
                raise ValueError("DensityMatrixEngine needs terminal measurements only")
            measurements = [
                op for op in circuit.all_operations() if isinstance(op.gate, cirq.MeasurementGate)
            ]
            read = [q for op in measurements for q in op.qubits]
            if len(set(read)) != len(read):
                raise ValueError(
                    "DensityMatrixEngine cannot measure a qubit twice; use one measurement per qubit"
                )
            qubits = read + sorted(set(circuit.all_qubits()) - set(read))
            rho = final_density_matrix(circuit, qubits, cache=self._cache)
            probs = np.clip(np.real(np.diag(rho)), 0, None).reshape(2 ** len(read), -1).sum(axis=1)
            probs /= probs.sum()
            samples = self._rng.choice(len(probs), size=repetitions, p=probs)
            bits = ((samples[:, None] >> np.arange(len(read) - 1, -1, -1)) & 1).astype(np.int8)
            records, start = {}, 0
            for op in measurements:
                width = len(op.qubits)
                gate = op.gate
                assert isinstance(gate, cirq.MeasurementGate)
                mask = np.array(gate.full_invert_mask(), dtype=np.int8)
                records[cirq.measurement_key_name(op)] = bits[:, start : start + width] ^ mask
                start += width
            out.append(cirq.ResultDict(params=resolver, measurements=records))
        return out
