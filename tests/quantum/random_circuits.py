"""Hypothesis strategies for random symbolic circuits over the supported gate set, and a qsimcirq reference."""

from __future__ import annotations

import cirq
import numpy as np
import qsimcirq
import sympy
from hypothesis import strategies as st

from quantum import QnnCircuit

SYMBOLS = sympy.symbols("a b c")


@st.composite
def angles(draw: st.DrawFn) -> sympy.Expr:
    """A linear expression of the symbols, e.g. 2*a + b - 0.3, or a plain number."""
    coefs = draw(st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5]), min_size=3, max_size=3))
    const = draw(st.sampled_from([0.0, -0.3, 1.1]))
    return sum((c * s for c, s in zip(coefs, SYMBOLS, strict=True)), sympy.Float(const))


ONE_QUBIT_FIXED = [cirq.H, cirq.X, cirq.Y, cirq.Z, cirq.S, cirq.T]
TWO_QUBIT_FIXED = [cirq.CZ, cirq.CNOT, cirq.SWAP, cirq.ISWAP]


@st.composite
def operations(draw: st.DrawFn, qubits: list[cirq.LineQubit]) -> cirq.Operation:
    kind = draw(st.sampled_from(["fixed1", "rot", "phxz", "matrix"] + (["fixed2", "crot", "pow2"] if len(qubits) > 1 else [])))
    q = draw(st.permutations(qubits))
    if kind == "fixed1":
        return draw(st.sampled_from(ONE_QUBIT_FIXED)).on(q[0])
    if kind == "rot":
        return draw(st.sampled_from([cirq.rx, cirq.ry, cirq.rz]))(draw(angles())).on(q[0])
    if kind == "phxz":
        return cirq.PhasedXZGate(x_exponent=draw(angles()), z_exponent=draw(angles()), axis_phase_exponent=0.25).on(q[0])
    if kind == "matrix":
        seed = draw(st.integers(0, 2**16))
        return cirq.MatrixGate(cirq.testing.random_unitary(2, random_state=seed)).on(q[0])
    if kind == "fixed2":
        return draw(st.sampled_from(TWO_QUBIT_FIXED)).on(q[0], q[1])
    if kind == "crot":
        return draw(st.sampled_from([cirq.rz, cirq.rx]))(draw(angles())).controlled().on(q[0], q[1])
    gate = draw(st.sampled_from([cirq.CZPowGate, cirq.ISwapPowGate, cirq.CXPowGate]))
    return gate(exponent=draw(angles())).on(q[0], q[1])


@st.composite
def random_circuits(draw: st.DrawFn, max_qubits: int = 10, max_ops: int = 10) -> tuple[QnnCircuit, np.ndarray]:
    """A circuit over 1..max_qubits qubits with symbols (a, b | c) and random values for them."""
    n = draw(st.integers(1, max_qubits))
    qubits = cirq.LineQubit.range(n)
    ops = draw(st.lists(operations(qubits), min_size=1, max_size=max_ops))
    readout = draw(st.sampled_from(["z", "probs"]))
    n_inputs = draw(st.integers(0, 2))
    qc = QnnCircuit(
        cirq.Circuit(ops), tuple(qubits), SYMBOLS[:n_inputs], SYMBOLS[n_inputs:], readout=readout
    )
    values = np.array(draw(st.lists(st.floats(-3, 3), min_size=6, max_size=6))).reshape(2, 3)
    return qc, values


def qsim_reference(qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
    """Outputs for rows of symbol values, computed directly with qsimcirq (float32)."""
    sim = qsimcirq.QSimSimulator()
    idle = [q for q in qc.qubits if q not in qc.circuit.all_qubits()]
    circuit = qc.circuit + cirq.Circuit(cirq.I(q) for q in idle)
    out = []
    for row in values:
        resolver = cirq.ParamResolver(dict(zip(qc.symbols, row.tolist(), strict=True)))
        if qc.readout == "z":
            ev = sim.simulate_expectation_values(circuit, [cirq.Z(q) for q in qc.qubits], resolver, qubit_order=list(qc.qubits))
            out.append(np.real(ev))
        else:
            state = sim.simulate(circuit, resolver, qubit_order=list(qc.qubits)).final_state_vector
            out.append(np.abs(state) ** 2)
    return np.array(out, dtype=np.float64)
