"""The JAX simulator against qsimcirq on random circuits, the QTHA circuit, compile caching and errors."""

from __future__ import annotations

import cirq
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings

from quantum import (
    CircuitSpec,
    CircuitTooLargeError,
    NonlinearParameterError,
    QnnCircuit,
    SimulatorOptions,
    UnresolvedSymbolError,
    UnsupportedGateError,
    build_circuit,
    compile_circuit,
    init_weights,
    make_qnn,
)
from tests.quantum.random_circuits import qsim_reference, random_circuits


def _split(qc: QnnCircuit, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = len(qc.input_symbols)
    return values[:, :k], values[0, k:]


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_circuits())
def test_random_circuits_match_qsim(case: tuple[QnnCircuit, np.ndarray]) -> None:
    qc, values = case
    inputs, weights = _split(qc, values)
    values = np.concatenate([inputs, np.broadcast_to(weights, (len(inputs), len(weights)))], axis=1)
    ours = compile_circuit(qc)(inputs, weights)  # eager: no per-example XLA compile
    assert ours.dtype == jnp.float32 and ours.shape == (2, qc.n_outputs)
    np.testing.assert_allclose(np.asarray(ours), qsim_reference(qc, values), atol=1e-5)


@pytest.mark.parametrize("readout", ["z", "probs"])
@pytest.mark.parametrize("max_block", [1, 5])
def test_qtha_circuit_matches_qsim(readout: str, max_block: int) -> None:
    spec = CircuitSpec(n_qubits=6, n_layers=2, readout=readout)
    qc = build_circuit(spec)
    rng = np.random.default_rng(1)
    h, w = rng.normal(size=(3, 6)), rng.normal(size=spec.n_weights)
    qnn = make_qnn(spec, backend=None) if max_block == 5 else None
    sim = compile_circuit(qc, SimulatorOptions(max_block_qubits=max_block))
    angles = np.pi * np.tanh(h)
    ref = qsim_reference(qc, np.concatenate([angles, np.broadcast_to(w, (3, len(w)))], axis=1))
    np.testing.assert_allclose(np.asarray(sim(angles, w)), ref, atol=1e-5)
    if qnn is not None:  # make_qnn applies the pi*tanh feature map itself
        np.testing.assert_allclose(np.asarray(qnn(h, w)), ref, atol=1e-5)


def test_weight_mode_has_no_inputs_and_probs_sum_to_one() -> None:
    spec = CircuitSpec(n_qubits=5, n_layers=3, encoding="none", readout="probs")
    qnn = make_qnn(spec)
    w = init_weights(spec, jax.random.key(0), scale=1.0)
    p = qnn(jnp.zeros((1, 0)), w)
    assert p.shape == (1, 32)
    np.testing.assert_allclose(float(p.sum()), 1.0, atol=1e-5)
    ref = qsim_reference(build_circuit(spec), np.asarray(w, np.float64)[None])
    np.testing.assert_allclose(np.asarray(p), ref, atol=1e-5)


def test_fixed_shapes_compile_once() -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1)
    qnn = make_qnn(spec)
    grad = jax.jit(jax.grad(lambda x, w: qnn(x, w).sum(), argnums=(0, 1)))
    key = jax.random.key(0)
    for i in range(3):
        x, w = jax.random.normal(jax.random.fold_in(key, i), (8, 3)), init_weights(spec, jax.random.fold_in(key, 9 + i))
        qnn(x, w).block_until_ready()
        jax.block_until_ready(grad(x, w))
    assert qnn._cache_size() == 1
    assert grad._cache_size() == 1
    qnn(jnp.zeros((16, 3)), w)  # a new batch size is a new shape: exactly one more entry
    assert qnn._cache_size() == 2


def test_vmap_over_weight_sets_equals_a_loop() -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1)
    qnn = make_qnn(spec)
    x = jax.random.normal(jax.random.key(1), (4, 3))
    ws = jnp.stack([init_weights(spec, jax.random.key(i), scale=1.0) for i in range(3)])
    batched = jax.vmap(qnn, in_axes=(None, 0))(x, ws)
    looped = jnp.stack([qnn(x, w) for w in ws])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), atol=1e-6)
    g_b = jax.vmap(jax.grad(lambda x, w: qnn(x, w).sum(), argnums=1), in_axes=(None, 0))(x, ws)
    g_l = jnp.stack([jax.grad(lambda x, w: qnn(x, w).sum(), argnums=1)(x, w) for w in ws])
    np.testing.assert_allclose(np.asarray(g_b), np.asarray(g_l), atol=1e-5)


def _temp_bytes(n_layers: int, kernel: str, batch: int) -> int:
    spec = CircuitSpec(n_qubits=5, n_layers=n_layers)
    f = compile_circuit(build_circuit(spec), SimulatorOptions(kernel=kernel))
    grad = jax.jit(jax.grad(lambda x, w: (f(x, w) ** 2).sum(), argnums=(0, 1)))
    compiled = grad.lower(jnp.zeros((batch, 5)), jnp.zeros(spec.n_weights)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kernel", ["xla", "native"])
def test_backward_memory_does_not_grow_with_depth(kernel: str) -> None:
    # The native path also holds every stage's gate matrices (a few KB each, whatever the batch), so its batch is
    # large enough that one state outweighs them; the states themselves must not be stored per stage.
    batch = 256 if kernel == "xla" else 2048
    state_bytes = batch * 2**5 * 8
    shallow, deep = _temp_bytes(2, kernel, batch), _temp_bytes(6, kernel, batch)
    # Storing every intermediate state would add (6-2)*4 stages of state-sized buffers; we allow less than one.
    assert deep - shallow < state_bytes, (shallow, deep)


def test_unsupported_gate_names_the_gate_and_the_supported_set() -> None:
    q = cirq.LineQubit.range(2)
    qc = QnnCircuit(cirq.Circuit(cirq.measure(*q, key="m")), tuple(q), (), ())
    with pytest.raises(UnsupportedGateError, match=r"MeasurementGate.*supported: any gate with a fixed unitary"):
        compile_circuit(qc)


def test_symbol_without_value_is_named() -> None:
    q = cirq.LineQubit(0)
    a, stray = sympy.symbols("a stray")
    qc = QnnCircuit(cirq.Circuit(cirq.rx(a + stray).on(q)), (q,), (), (a,))
    with pytest.raises(UnresolvedSymbolError, match="symbol stray"):
        compile_circuit(qc)


def test_nonlinear_parameter_is_rejected() -> None:
    q = cirq.LineQubit(0)
    a = sympy.Symbol("a")
    qc = QnnCircuit(cirq.Circuit(cirq.rx(a**2).on(q)), (q,), (), (a,))
    with pytest.raises(NonlinearParameterError, match="not affine"):
        compile_circuit(qc)


def test_too_large_circuit_says_how_much_memory_it_needs() -> None:
    qc = build_circuit(CircuitSpec(n_qubits=4, n_layers=1))
    sim = compile_circuit(qc, SimulatorOptions(memory_limit_bytes=10_000))
    with pytest.raises(CircuitTooLargeError, match=r"4 qubits at batch 100 needs about .* GiB"):
        sim(jnp.zeros((100, 4)), jnp.zeros(16))


def test_bad_argument_shapes_are_named() -> None:
    sim = compile_circuit(build_circuit(CircuitSpec(n_qubits=3, n_layers=1)))
    with pytest.raises(ValueError, match=r"expected inputs \[B, 3\] and weights \[12\]"):
        sim(jnp.zeros((2, 4)), jnp.zeros(12))


def test_chunked_batches_equal_one_block_in_values_and_gradients() -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=2)
    qc = build_circuit(spec)
    x = jax.random.normal(jax.random.key(2), (5, 3))  # 5 = 2 + 2 + 1: the last chunk is padded
    w = init_weights(spec, jax.random.key(3), scale=1.0)
    results = []
    for chunk in (2, 64):
        sim = jax.jit(compile_circuit(qc, SimulatorOptions(chunk_size=chunk)))
        value = sim(x, w)
        grads = jax.grad(lambda x, w, sim=sim: (sim(x, w) * jnp.arange(1.0, 4.0)).sum(), argnums=(0, 1))(x, w)
        results.append((value, *grads))
    for chunked, whole in zip(*results, strict=True):
        np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-5)
