"""Gradients: adjoint autodiff vs exact parameter shift (qsim) vs central finite differences vs SPSA."""

from __future__ import annotations

import cirq
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from quantum import (
    CircuitSpec,
    JaxBackend,
    QnnCircuit,
    QsimBackend,
    SimulatorOptions,
    Spsa,
    build_circuit,
    compile_circuit,
    make_qnn,
    parameter_shift_jacobian,
    parameter_shift_terms,
    shift_rule,
    split_occurrences,
)
from quantum.lowering import lower_circuit

A, B, C = sympy.symbols("a b c")


def _mixed_circuit() -> QnnCircuit:
    """Every rotation kind, controlled rotations, shared symbols and affine expressions; input a, weights b, c."""
    q = cirq.LineQubit.range(3)
    ops = [
        cirq.H(q[0]),
        cirq.ry(A).on(q[1]),
        cirq.rz(2 * B + C - 0.3).controlled().on(q[0], q[1]),
        cirq.rx(B).on(q[2]).controlled_by(q[1]),
        cirq.PhasedXZGate(x_exponent=C, z_exponent=0.2, axis_phase_exponent=B).on(q[2]),
        cirq.ISwapPowGate(exponent=A - C).on(q[0], q[2]),
        cirq.CNOT(q[2], q[0]),
        cirq.rz(B).on(q[1]),
        cirq.ry(C + 0.5 * A).on(q[0]),
    ]
    return QnnCircuit(cirq.Circuit(ops), tuple(q), (A,), (B, C))


def _loss_weights(m: int) -> np.ndarray:
    return np.linspace(-1.0, 1.5, m)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_autodiff_equals_exact_parameter_shift(readout: str) -> None:
    qc = _mixed_circuit()
    qc = QnnCircuit(qc.circuit, qc.qubits, qc.input_symbols, qc.weight_symbols, readout=readout)
    x, w = np.array([[0.4], [-1.3]]), np.array([0.7, -0.2])
    g = _loss_weights(qc.n_outputs)
    sim = jax.jit(compile_circuit(qc))
    gx, gw = jax.grad(lambda x, w: (sim(x, w) * g).sum(), argnums=(0, 1))(x, w)
    values = np.concatenate([x, np.broadcast_to(w, (2, 2))], axis=1)
    jac = parameter_shift_jacobian(QsimBackend().evaluate, split_occurrences(qc), values)  # [B, m, S]
    ref = np.einsum("m,bms->bs", g, jac)
    np.testing.assert_allclose(np.asarray(gx), ref[:, :1], atol=1e-4)
    np.testing.assert_allclose(np.asarray(gw), ref[:, 1:].sum(axis=0), atol=1e-4)


def test_autodiff_equals_central_differences_in_complex128() -> None:
    qc = _mixed_circuit()
    x, w = np.array([[0.4], [-1.3]]), np.array([0.7, -0.2])
    g = _loss_weights(qc.n_outputs)
    with jax.enable_x64(True):
        sim = jax.jit(compile_circuit(qc, SimulatorOptions(dtype="complex128")))

        def loss(x, w):
            return (sim(x, w) * g).sum()

        gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
        h = 1e-5
        fd_w = [(loss(x, w + h * e) - loss(x, w - h * e)) / (2 * h) for e in np.eye(2)]
        fd_x = [(loss(x + h * e.reshape(2, 1), w) - loss(x - h * e.reshape(2, 1), w)) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(np.asarray(gw), np.array(fd_w), atol=1e-5)
        np.testing.assert_allclose(np.asarray(gx).ravel(), np.array(fd_x), atol=1e-5)


def test_qtha_gradients_through_the_tanh_encoding_match_parameter_shift_backend() -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1)
    h = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=spec.n_weights), jnp.float32)
    g = jnp.asarray(_loss_weights(3), jnp.float32)
    grads = []
    for backend in (None, QsimBackend()):
        qnn = make_qnn(spec, backend=backend)
        grads.append(jax.grad(lambda h, w, qnn=qnn: (qnn(h, w) * g).sum(), argnums=(0, 1))(h, w))
    (ax, aw), (sx, sw) = grads
    np.testing.assert_allclose(np.asarray(ax), np.asarray(sx), atol=1e-4)
    np.testing.assert_allclose(np.asarray(aw), np.asarray(sw), atol=1e-4)


def test_shift_rules_are_the_textbook_ones() -> None:
    q = cirq.LineQubit.range(2)
    ry, crz = lower_circuit(cirq.Circuit(cirq.ry(A).on(q[0]), cirq.rz(A).controlled().on(*q)), q, [A]).ops
    # In exponent units (t = theta/pi): RY shifts theta by pi/2 with 1/2 -> coefficient pi/2.
    r = shift_rule(ry)
    np.testing.assert_allclose(np.array(r.shifts) * np.pi, [np.pi / 2])
    np.testing.assert_allclose(np.array(r.coefficients) / np.pi, [0.5])
    r = shift_rule(crz)  # four-term rule: shifts pi/2, 3pi/2; coefficients (sqrt2 +- 1) / (4 sqrt2)
    np.testing.assert_allclose(np.array(r.shifts) * np.pi, [np.pi / 2, 3 * np.pi / 2])
    s2 = np.sqrt(2)
    np.testing.assert_allclose(np.array(r.coefficients) / np.pi, [(s2 + 1) / (4 * s2), -(s2 - 1) / (4 * s2)])


def test_parameter_shift_terms_sum_every_occurrence_of_a_symbol() -> None:
    qc = _mixed_circuit()
    oc = split_occurrences(qc)
    values = np.array([0.4, 0.7, -0.2])
    backend = QsimBackend()
    for symbol in range(3):
        terms = parameter_shift_terms(oc, values, symbol)
        resolved = np.array([[r.value_of(t) for t in oc.qc.weight_symbols] for r, _ in terms])
        f = backend.evaluate(oc.qc, resolved)
        estimate = sum(c * fi for (_, c), fi in zip(terms, f, strict=True))
        h = 1e-3
        e = np.eye(3)[symbol]
        fd = (backend.evaluate(qc, (values + h * e)[None]) - backend.evaluate(qc, (values - h * e)[None]))[0] / (2 * h)
        np.testing.assert_allclose(estimate, fd, atol=2e-3)


def test_spsa_is_seeded_pure_and_unbiased() -> None:
    spec = CircuitSpec(n_qubits=2, n_layers=1)
    qc = build_circuit(spec)
    x = np.array([[0.3, -0.5]]) * np.pi
    w = np.random.default_rng(2).normal(size=spec.n_weights)
    g = np.array([[1.0, -0.5]])
    backend = JaxBackend()
    exact = parameter_shift_jacobian(backend.evaluate, split_occurrences(qc), np.concatenate([x, w[None]], 1))
    exact = np.einsum("bm,bms->bs", g, exact)
    rule = Spsa(seed=7, epsilon=0.01, samples=400)
    gx, gw = rule.vjp(backend, qc, x, w, g)
    again = rule.vjp(backend, qc, x, w, g)
    np.testing.assert_array_equal(gw, again[1])  # pure: same arguments, same estimate
    # Each SPSA component has the other components' (+-1-weighted) sum as noise; 400 samples shrink it 20x.
    noise = np.abs(exact).sum() / np.sqrt(400)
    np.testing.assert_allclose(gw, exact[0, 2:], atol=3 * noise)
    np.testing.assert_allclose(gx[0], exact[0, :2], atol=3 * noise)
    different = Spsa(seed=8, epsilon=0.01, samples=1).vjp(backend, qc, x, w, g)[1]
    assert not np.array_equal(different, Spsa(seed=7, epsilon=0.01, samples=1).vjp(backend, qc, x, w, g)[1])


def test_spsa_trains_through_make_qnn_on_a_non_differentiable_backend() -> None:
    spec = CircuitSpec(n_qubits=2, n_layers=1)
    qnn = make_qnn(spec, backend=QsimBackend(), gradient=Spsa(seed=0, samples=4))
    x = jnp.zeros((2, 2))
    w = jnp.full(spec.n_weights, 0.3, jnp.float32)

    def loss(w):
        return ((qnn(x, w) - jnp.array([-1.0, 1.0])) ** 2).sum()

    start = float(loss(w))
    for _ in range(15):
        w = w - 0.2 * jax.grad(loss)(w)
    assert float(loss(w)) < 0.5 * start
