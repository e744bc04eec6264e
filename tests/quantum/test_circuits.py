"""The QTHA ansatz built from a spec: sizes, gate layout, symbols, errors."""

from __future__ import annotations

import cirq
import jax
import numpy as np
import pytest
import sympy

from quantum import CircuitSpec, QnnCircuit, QuantumSpecError, build_circuit, init_weights


def test_qtha_defaults_match_the_paper() -> None:
    spec = CircuitSpec()
    assert (spec.n_qubits, spec.n_layers, spec.n_inputs, spec.n_weights, spec.n_outputs) == (10, 10, 10, 400, 10)
    qc = build_circuit(spec)
    assert len(qc.weight_symbols) == 400 and len(qc.input_symbols) == 10
    assert qc.qubits == tuple(cirq.LineQubit.range(10))
    assert qc.feature_map == "pi_tanh" and qc.readout == "z"


def test_weight_mode_probs_sizes() -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=2, encoding="none", readout="probs", entangler="cz_ring")
    qc = build_circuit(spec)
    assert (spec.n_inputs, spec.n_weights, spec.n_outputs) == (0, 12, 8)
    assert qc.input_symbols == () and len(qc.weight_symbols) == 12 and qc.feature_map == "identity"


def test_layer_layout_is_ry_ring_ry_reverse_ring() -> None:
    qc = build_circuit(CircuitSpec(n_qubits=3, n_layers=1))
    q = qc.qubits
    t = sympy.symbols("theta_0:12")
    x = sympy.symbols("x_0:3")
    expected = (
        [cirq.ry(x[i]).on(q[i]) for i in range(3)]
        + [cirq.ry(t[i]).on(q[i]) for i in range(3)]
        + [cirq.rz(t[3 + i]).controlled().on(q[i], q[(i + 1) % 3]) for i in range(3)]
        + [cirq.ry(t[6 + i]).on(q[i]) for i in range(3)]
        + [cirq.rz(t[9 + i]).controlled().on(q[i], q[(i - 1) % 3]) for i in range(3)]
    )
    # Moments pack ops (EARLIEST), so compare against the same op list packed the same way.
    assert qc.circuit == cirq.Circuit(expected)


def test_init_weights_are_small_and_seeded() -> None:
    spec = CircuitSpec(n_qubits=4, n_layers=3)
    w = init_weights(spec, jax.random.key(3), scale=0.02)
    assert w.shape == (48,) and w.dtype == np.float32
    assert 0.005 < float(np.std(w)) < 0.05
    np.testing.assert_array_equal(w, init_weights(spec, jax.random.key(3), scale=0.02))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_qubits": 1}, "n_qubits=1"),
        ({"n_layers": -1}, "n_layers=-1"),
        ({"encoding": "amplitude"}, "encoding='amplitude'"),
        ({"entangler": "cnot"}, "entangler='cnot'"),
        ({"readout": "x"}, "readout='x'"),
    ],
)
def test_bad_specs_name_the_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(QuantumSpecError, match=fragment.replace("(", r"\(")):
        CircuitSpec(**kwargs)


def test_record_rejects_qubits_outside_the_order() -> None:
    a, b = cirq.LineQubit.range(2)
    with pytest.raises(QuantumSpecError, match="not in qubits"):
        QnnCircuit(cirq.Circuit(cirq.CZ(a, b)), qubits=(a,), input_symbols=(), weight_symbols=())
