"""The native (fused C) simulator kernels against qsimcirq and against the XLA kernels, values and gradients."""

from __future__ import annotations

import stat

import cirq
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy
from hypothesis import HealthCheck, given, settings

from quantum import (
    CircuitSpec,
    QnnCircuit,
    QuantumSpecError,
    SimulatorOptions,
    build_circuit,
    compile_circuit,
)
from quantum.errors import NativeKernelError
from quantum.native import KIND_COMPLEX, KIND_PHASE, KIND_REAL, NativeLibrary
from quantum.statevector import _native_program, _plan
from tests.quantum.random_circuits import qsim_reference, random_circuits
from tests.support.tools import find_tool, needs_tool

pytestmark = needs_tool("cc", available=bool(find_tool("cc") or find_tool("gcc")),
                        how="apt-get install gcc (it builds the native simulator kernels)")

XLA, NATIVE = SimulatorOptions(kernel="xla"), SimulatorOptions(kernel="native")


def _loss(f):
    # A readout-dependent weighting, so that every output's cotangent differs.
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)) * (1.0 + jnp.arange(f(x, w).shape[1])))


def _assert_same(qc: QnnCircuit, x: np.ndarray, w: np.ndarray, options: SimulatorOptions = NATIVE) -> None:
    """Values and gradients (inputs and weights) of the native path equal the XLA path's."""
    fx, fn = compile_circuit(qc, XLA), compile_circuit(qc, options)
    x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(x, w)), np.asarray(jax.jit(fx)(x, w)), atol=2e-6)
    gx = jax.jit(jax.grad(_loss(fx), argnums=(0, 1)))(x, w)
    gn = jax.jit(jax.grad(_loss(fn), argnums=(0, 1)))(x, w)
    for a, b in zip(gn, gx, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [
        CircuitSpec(n_qubits=3, n_layers=1),
        CircuitSpec(n_qubits=4, n_layers=2, readout="probs"),
        CircuitSpec(n_qubits=7, n_layers=2, entangler="cz_ring"),  # blocks of 16 and 8: the strided paths
        CircuitSpec(n_qubits=10, n_layers=2),  # the paper's width: 32-wide blocks on both sides
        CircuitSpec(n_qubits=6, n_layers=2, encoding="none"),  # weight mode: no inputs, no batched stage
    ],
    ids=lambda s: f"{s.n_qubits}q{s.n_layers}L-{s.encoding}-{s.entangler}-{s.readout}",
)
def test_qtha_circuits_equal_the_xla_kernels_and_qsim(spec: CircuitSpec) -> None:
    qc = build_circuit(spec)
    rng = np.random.default_rng(spec.n_qubits)
    x = rng.uniform(-2.0, 2.0, size=(5, spec.n_inputs))
    w = rng.uniform(-2.0, 2.0, size=spec.n_weights)
    _assert_same(qc, x, w)
    values = np.concatenate([x, np.broadcast_to(w, (5, len(w)))], axis=1)
    np.testing.assert_allclose(np.asarray(compile_circuit(qc, NATIVE)(x, w)), qsim_reference(qc, values), atol=1e-5)


def _reuploading() -> QnnCircuit:
    """Complex single-qubit gates (RX, RZ), inputs uploaded again mid-circuit (per-example stages after the first)
    and parametrised phases: every native factor kind, shared and batched."""
    q = cirq.LineQubit.range(6)
    x0, x1, a, b, c = sympy.symbols("x0 x1 a b c")
    circuit = cirq.Circuit(
        [cirq.ry(x0).on(q[0]), cirq.rx(x1).on(q[1])],
        [cirq.rx(a + 0.3).on(qq) for qq in q],
        [cirq.CZ(q[i], q[i + 1]) for i in range(5)],
        [cirq.rz(2 * x0 - b).on(q[2]), cirq.rx(x1 + c).on(q[4]), cirq.ry(b).on(q[5])],
        cirq.ZPowGate(exponent=c).on(q[3]),
        [cirq.rz(a).controlled().on(q[i], q[(i + 1) % 6]) for i in range(6)],
        [cirq.ry(x1 - a).on(qq) for qq in q],
        cirq.PhasedXZGate(x_exponent=0.4, z_exponent=0.1, axis_phase_exponent=0.25).on(q[1]),
    )
    return QnnCircuit(circuit=circuit, qubits=tuple(q), input_symbols=(x0, x1), weight_symbols=(a, b, c))


def test_complex_gates_and_mid_circuit_inputs_equal_the_xla_kernels() -> None:
    qc = _reuploading()
    program = _native_program(_plan(qc, NATIVE))
    assert program is not None and program.row_size > 0 and program.shared_size > 0
    assert {lay.kind for lay in program.layouts} == {KIND_REAL, KIND_COMPLEX, KIND_PHASE}  # all three run
    rng = np.random.default_rng(3)
    _assert_same(qc, rng.uniform(-2, 2, size=(9, 2)), rng.uniform(-2, 2, size=3))


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_circuits())
def test_random_circuits_match_qsim_with_kernel_auto(case: tuple[QnnCircuit, np.ndarray]) -> None:
    qc, values = case
    k = len(qc.input_symbols)
    inputs, weights = values[:, :k], values[0, k:]
    ours = compile_circuit(qc, SimulatorOptions(kernel="auto"))(inputs, weights)
    full = np.concatenate([inputs, np.broadcast_to(weights, (len(inputs), len(weights)))], axis=1)
    np.testing.assert_allclose(np.asarray(ours), qsim_reference(qc, full), atol=1e-5)
    if _native_program(_plan(qc, NATIVE)) is not None:
        _assert_same(qc, inputs, weights)


def test_a_dense_gate_is_refused_by_native_and_run_by_auto() -> None:
    q = cirq.LineQubit.range(3)
    a = sympy.Symbol("a")
    qc = QnnCircuit(circuit=cirq.Circuit(cirq.ry(a).on(q[0]), cirq.CNOT(q[0], q[2])), qubits=tuple(q),
                    input_symbols=(), weight_symbols=(a,))
    with pytest.raises(QuantumSpecError, match=r"dense multi-qubit gate.*kernel='xla' or 'auto'"):
        compile_circuit(qc, NATIVE)
    out = compile_circuit(qc, SimulatorOptions(kernel="auto"))(np.zeros((1, 0)), np.array([0.7]))
    np.testing.assert_allclose(np.asarray(out)[0, [0, 2]], [np.cos(0.7)] * 2, atol=1e-6)
    with pytest.raises(QuantumSpecError, match="complex64"):
        compile_circuit(build_circuit(CircuitSpec(n_qubits=2, n_layers=1)),
                        SimulatorOptions(kernel="native", dtype="complex128"))
    with pytest.raises(QuantumSpecError, match="choose 'xla', 'native' or 'auto'"):
        SimulatorOptions(kernel="fast")  # type: ignore[arg-type]


def test_vmap_over_weight_sets_equals_a_loop() -> None:
    spec = CircuitSpec(n_qubits=4, n_layers=1)
    f = compile_circuit(build_circuit(spec), NATIVE)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    ws = jnp.asarray(rng.normal(size=(2, spec.n_weights)), jnp.float32)
    batched = jax.vmap(f, in_axes=(None, 0))(x, ws)
    np.testing.assert_allclose(np.asarray(batched), np.stack([np.asarray(f(x, w)) for w in ws]), atol=1e-6)


def test_the_build_is_cached_privately_and_reused(tmp_path, monkeypatch) -> None:
    first = NativeLibrary.load(cache_dir=tmp_path)
    mtime = first.path.stat().st_mtime_ns
    again = NativeLibrary.load(cache_dir=tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime  # not rebuilt
    assert list(tmp_path.iterdir()) == [first.path]  # no temporary build directory left behind
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    cache = NativeLibrary.load().path.parent  # the default per-user cache, here a fresh one
    assert cache == tmp_path / "home-cache" / "qtha" / "native"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_a_failing_compiler_names_the_fix_and_auto_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(NativeKernelError, match=r"failed.*kernel='xla'"):
        NativeLibrary.load(cache_dir=tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache: auto must build, fail, fall back
    spec = CircuitSpec(n_qubits=3, n_layers=1)
    qc = build_circuit(spec)
    x, w = np.full((2, 3), 0.4), np.linspace(-1, 1, spec.n_weights)
    np.testing.assert_allclose(np.asarray(compile_circuit(qc, SimulatorOptions(kernel="auto"))(x, w)),
                               np.asarray(compile_circuit(qc, XLA)(x, w)), atol=1e-6)
    with pytest.raises(NativeKernelError):
        compile_circuit(qc, NATIVE)
