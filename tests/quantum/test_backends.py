"""Backends behind one protocol: qsim and the JAX simulator agree; a sampler estimates within shot noise."""

from __future__ import annotations

import cirq
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum import (
    Backend,
    CircuitSpec,
    DifferentiableBackend,
    JaxBackend,
    QsimBackend,
    SamplerBackend,
    build_circuit,
    estimate,
    make_qnn,
    standard_error,
)


def _rows(spec: CircuitSpec, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, spec.n_inputs + spec.n_weights))


def test_backends_satisfy_the_protocol() -> None:
    assert isinstance(JaxBackend(), DifferentiableBackend)
    for backend in (QsimBackend(), SamplerBackend()):
        assert isinstance(backend, Backend) and not isinstance(backend, DifferentiableBackend)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_qsim_and_jax_backends_agree(readout: str) -> None:
    spec = CircuitSpec(n_qubits=4, n_layers=2, readout=readout)
    qc, values = build_circuit(spec), _rows(spec, 3)
    np.testing.assert_allclose(QsimBackend().evaluate(qc, values), JaxBackend().evaluate(qc, values), atol=1e-5)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_sampler_estimates_within_four_standard_errors(readout: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1, readout=readout)
    qc, values = build_circuit(spec), _rows(spec, 2, seed=1)
    shots = 10_000
    exact = QsimBackend().evaluate(qc, values)
    sampled = SamplerBackend(repetitions=shots, sampler=cirq.Simulator(seed=5)).evaluate(qc, values)
    assert np.all(np.abs(sampled - exact) <= 4 * standard_error(exact, readout, shots) + 1e-12)
    assert not np.allclose(sampled, exact, atol=1e-6)  # they are estimates, not exact values


def test_sampler_is_seedable() -> None:
    spec = CircuitSpec(n_qubits=2, n_layers=1)
    qc, values = build_circuit(spec), _rows(spec, 2)
    first = SamplerBackend(repetitions=200, seed=3).evaluate(qc, values)
    np.testing.assert_array_equal(first, SamplerBackend(repetitions=200, seed=3).evaluate(qc, values))
    assert not np.array_equal(first, SamplerBackend(repetitions=200, seed=4).evaluate(qc, values))


def test_estimate_reads_big_endian_bits() -> None:
    bits = np.array([[0, 1], [0, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(estimate(bits, "z"), [0.5, -0.5])
    np.testing.assert_allclose(estimate(bits, "probs"), [0.25, 0.5, 0.0, 0.25])


def test_make_qnn_on_a_sampler_runs_under_jit_and_grad() -> None:
    spec = CircuitSpec(n_qubits=2, n_layers=1)
    qnn = make_qnn(spec, backend=SamplerBackend(repetitions=4000, seed=0))
    exact = make_qnn(spec)
    x = jnp.asarray([[0.2, -0.4]], jnp.float32)
    w = jnp.linspace(-1, 1, spec.n_weights, dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(qnn(x, w)), np.asarray(exact(x, w)), atol=4 / np.sqrt(4000))
    g = jax.grad(lambda w: qnn(x, w).sum())(w)
    g_exact = jax.grad(lambda w: exact(x, w).sum())(w)
    # Parameter-shift on shots: each component sums 2-4 estimates with coefficients up to ~0.5*pi.
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_exact), atol=0.25)
