"""Parameter-shift Jacobians with standard errors, through the executor on the emulator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum import CircuitSpec, JaxBackend, build_circuit, make_qnn
from quantum.emulator import Calibration, DeviceEmulator, DeviceSpec, EmulatorConfig
from quantum.executor import Executor
from quantum.hardware.gradients import parameter_shift_estimate
from quantum.hardware.shots import ExecutorBackend
from quantum.qpu import SimulatedDeviceClock

GRID = DeviceSpec(name="grid-3x3", rows=3, cols=3)


def exact_jacobian(spec: CircuitSpec, weights: np.ndarray) -> np.ndarray:
    qnn = make_qnn(spec)
    return np.asarray(jax.jacobian(lambda w: qnn(jnp.zeros((1, 0)), w)[0])(jnp.asarray(weights, jnp.float32)))


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_parameter_shift_rules_are_exact_on_exact_values(readout: str) -> None:
    spec = CircuitSpec(n_qubits=3, n_layers=1, encoding="none", readout=readout)
    weights = np.random.default_rng(1).uniform(-np.pi, np.pi, spec.n_weights)
    jac = parameter_shift_estimate(JaxBackend(), build_circuit(spec), weights)
    np.testing.assert_allclose(jac.values, exact_jacobian(spec, weights), atol=2e-5)


@pytest.mark.parametrize("readout", ["z", "probs"])
def test_parameter_shift_from_10000_shots_agrees_with_exact_gradients(readout: str) -> None:
    """Acceptance: every Jacobian entry within 4 standard errors (RY two-term and CRZ four-term rules)."""
    spec = CircuitSpec(n_qubits=3, n_layers=1, encoding="none", readout=readout)
    qc = build_circuit(spec)
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, seed=2), calibration=Calibration.ideal(GRID), clock=clock
    )
    backend = ExecutorBackend(Executor(emulator, clock=clock, client_id=f"ps-{readout}"), repetitions=10_000)
    weights = np.random.default_rng(0).uniform(-1, 1, spec.n_weights)
    jac = parameter_shift_estimate(backend, qc, weights)
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


def test_make_qnn_runs_on_the_emulator_through_the_executor() -> None:
    """The quantum package's make_qnn over an ExecutorBackend, and its SamplerBackend over an ExecutorSampler."""
    from quantum import SamplerBackend
    from quantum.executor import ExecutorSampler

    spec = CircuitSpec(n_qubits=2, n_layers=1, encoding="angle", readout="z")
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, seed=6), calibration=Calibration.ideal(GRID), clock=clock
    )
    executor = Executor(emulator, clock=clock, client_id="qnn")
    inputs = jnp.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]])
    weights = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, spec.n_weights), jnp.float32)
    exact = np.asarray(make_qnn(spec)(inputs, weights))
    shots = 20_000
    for backend in (
        ExecutorBackend(executor, repetitions=shots),
        SamplerBackend(repetitions=shots, sampler=ExecutorSampler(executor)),
    ):
        estimated = np.asarray(make_qnn(spec, backend=backend)(inputs, weights))
        stderr = np.sqrt((1 - exact**2) / shots) + 1e-4
        assert np.all(np.abs(estimated - exact) < 4 * stderr), (backend.name, estimated, exact)
    assert executor.stats().programs == 2 * len(inputs)
