"""Training on shots: parameter-shift and SPSA gradients through the executor, the hardware-in-the-loop step."""

from __future__ import annotations

import cirq
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from quantum import CircuitSpec, JaxBackend, QnnCircuit, build_circuit, make_qnn
from quantum.emulator import Calibration, DeviceEmulator, DeviceSpec, EmulatorConfig
from quantum.executor import Executor
from quantum.hardware import FakeClock
from quantum.hardware.gradients import parameter_shift_jacobian, shift_rules, spsa_gradient
from quantum.hardware.shots import ExecutorBackend

GRID = DeviceSpec(name="grid-3x3", rows=3, cols=3)


def exact_jacobian(spec: CircuitSpec, weights: np.ndarray) -> np.ndarray:
    qnn = make_qnn(spec)
    return np.asarray(jax.jacobian(lambda w: qnn(jnp.zeros((1, 0)), w)[0])(jnp.asarray(weights, jnp.float32)))


class ExactWeightRows:
    """An exact backend for weight-only circuits, jitted once (JaxBackend.evaluate re-traces per call)."""

    name = "exact"

    def __init__(self, spec: CircuitSpec) -> None:
        qnn = make_qnn(spec)
        self._f = jax.jit(jax.vmap(lambda w: qnn(jnp.zeros((1, 0)), w)[0]))

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        return np.asarray(self._f(jnp.asarray(values, jnp.float32)), dtype=np.float64)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_parameter_shift_rules_are_exact_on_exact_values(readout: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1, encoding="none", readout=readout)
    weights = np.random.default_rng(1).uniform(-np.pi, np.pi, spec.n_weights)
    jac = parameter_shift_jacobian(JaxBackend(), build_circuit(spec), weights)
    np.testing.assert_allclose(jac.values, exact_jacobian(spec, weights), atol=2e-5)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_parameter_shift_from_10000_shots_agrees_with_exact_gradients(readout: str) -> None:
    """Acceptance: every Jacobian entry within 4 standard errors (RY two-term and CRZ four-term rules)."""
    spec = CircuitSpec(n_qubits=3, n_layers=1, encoding="none", readout=readout)
    qc = build_circuit(spec)
    clock = FakeClock()
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, seed=2), calibration=Calibration.ideal(GRID), clock=clock
    )
    backend = ExecutorBackend(Executor(emulator, clock=clock, client_id=f"ps-{readout}"), repetitions=10_000)
    weights = np.random.default_rng(0).uniform(-1, 1, spec.n_weights)
    jac = parameter_shift_jacobian(backend, qc, weights)
    exact = exact_jacobian(spec, weights)
    z = np.abs(jac.values - exact) / jac.stderr
    print(
        f"{readout}: max |error|/stderr = {z.max():.2f} over {z.size} entries; max |error| "
        f"{np.abs(jac.values - exact).max():.4f}"
    )
    assert z.max() < 4
    stats = backend.executor.stats()
    assert stats.programs == 6 * 2 + 6 * 4  # six RY (two terms) and six CRZ (four terms) weights
    assert stats.shots == stats.programs * 10_000


def test_spsa_averages_to_the_gradient_of_a_loss() -> None:
    spec = CircuitSpec(n_qubits=2, n_layers=1, encoding="none", readout="z")
    qc = build_circuit(spec)
    weights = np.random.default_rng(3).uniform(-1, 1, spec.n_weights)
    target = np.array([0.2, -0.4])

    def loss(outputs: np.ndarray) -> float:
        return float(np.sum((outputs - target) ** 2))

    backend = ExactWeightRows(spec)
    outputs = backend.evaluate(qc, weights[None])[0]
    true = 2 * (outputs - target) @ exact_jacobian(spec, weights)
    rng = np.random.default_rng(4)
    estimates = np.array(
        [spsa_gradient(backend, qc, weights, loss, rng=rng, perturbation=0.05) for _ in range(400)]
    )
    mean, stderr = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
    assert np.all(np.abs(mean - true) < 4 * stderr + 1e-3)
    assert np.abs(true).max() > 10 * stderr.max() / 4  # the gradient is resolved, so the check has teeth


def test_shift_rules_refuse_shared_or_nonlinear_weights() -> None:
    q = cirq.LineQubit.range(2)
    a = sympy.Symbol("a")
    shared = QnnCircuit(cirq.Circuit(cirq.ry(a).on(q[0]), cirq.ry(a).on(q[1])), tuple(q), (), (a,))
    with pytest.raises(ValueError, match="appears in 2 gates"):
        shift_rules(shared)
    squared = QnnCircuit(cirq.Circuit(cirq.ry(a**2).on(q[0])), tuple(q), (), (a,))
    with pytest.raises(ValueError, match="must be linear"):
        shift_rules(squared)
    scaled = QnnCircuit(cirq.Circuit(cirq.ry(2 * a).on(q[0])), tuple(q), (), (a,))
    assert shift_rules(scaled)[0].terms == ((1.0, np.pi / 4), (-1.0, -np.pi / 4))
