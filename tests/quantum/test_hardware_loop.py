"""Hardware in the loop on the emulator: QNN weights refined through the executor, with clean fallbacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum import CircuitSpec, Spsa, build_circuit, make_qnn
from quantum.emulator import Calibration, DeviceEmulator, DeviceSpec, EmulatorConfig, FailureModel
from quantum.executor import Executor, ExecutorConfig, SpendLimit
from quantum.hardware.loop import DeviceQnn, RefineConfig, refine_on_device
from quantum.hardware.shots import ExecutorBackend
from quantum.qpu import SimulatedDeviceClock

GRID = DeviceSpec(name="grid-2x3", rows=2, cols=3)
SPEC = CircuitSpec(n_qubits=2, n_layers=1, encoding="none", readout="probs")
TARGET = jnp.array([0.1, 0.2, 0.6, 0.1])
SHOTS = 2000
# Programs per refinement step: one forward circuit and the shifted circuits of 4 RY (2 each) + 4 CRZ (4 each).
PER_STEP = 1 + 4 * 2 + 4 * 4


def setup(*, limit: SpendLimit | None = None, failures: FailureModel | None = None, rule=None):
    clock = SimulatedDeviceClock()
    calibration = Calibration.synthetic(GRID, seed=1)
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, seed=3, failures=failures or FailureModel()),
        calibration=calibration,
        clock=clock,
    )
    executor = Executor(
        emulator,
        ExecutorConfig(spend_limit=limit or SpendLimit(), offline_timeout_s=60),
        clock=clock,
        client_id="hil",
    )
    backend = ExecutorBackend(executor, repetitions=SHOTS, confusions_for=calibration.confusion_matrices)
    qnn = DeviceQnn(build_circuit(SPEC), backend, rule)
    return executor, qnn


def loss_of(qnn):
    def loss(theta):
        return jnp.sum((qnn(jnp.zeros((1, 0)), theta)[0] - TARGET) ** 2)

    return loss


def pretrained_on_simulator(steps: int = 15) -> jax.Array:
    """The simulator stage: a few exact-gradient steps from a seeded start (deliberately not converged)."""
    loss = jax.jit(loss_of(make_qnn(SPEC)))
    theta = 0.3 * jax.random.normal(jax.random.key(0), (SPEC.n_weights,))
    for _ in range(steps):
        theta = theta - 0.2 * jax.grad(loss)(theta)
    return theta


def test_refinement_on_the_device_lowers_the_device_loss_and_records_shots_and_cost() -> None:
    executor, qnn = setup()
    theta = pretrained_on_simulator(steps=3)
    result = refine_on_device(
        loss_of(qnn),
        theta,
        qnns=[qnn],
        executor=executor,
        config=RefineConfig(steps=4, learning_rate=0.1),
        validate_fn=loss_of(qnn),
    )
    losses = [h.loss for h in result.history]
    exact = jax.jit(loss_of(make_qnn(SPEC)))
    print(
        f"device loss by step {np.round(losses, 4)}, validation {result.validation_loss:.4f}; exact loss "
        f"{float(exact(theta)):.4f} -> {float(exact(result.params)):.4f}; {result.stats.shots} shots, "
        f"cost {result.stats.cost:.2f}"
    )
    assert result.stopped == "completed" and len(result.history) == 4
    assert result.validation_loss < losses[0] * 0.8
    assert float(exact(result.params)) < float(exact(theta))
    assert result.stats.programs == 4 * PER_STEP + 1
    assert result.stats.shots == result.stats.programs * SHOTS
    assert [h.shots for h in result.history] == [k * PER_STEP * SHOTS for k in (1, 2, 3, 4)]
    assert result.stats.cost > 0 and result.history[-1].cost <= result.stats.cost


def test_spsa_rule_refines_with_two_circuits_per_gradient() -> None:
    executor, qnn = setup(rule=Spsa(seed=1, epsilon=0.1, samples=2))
    theta = pretrained_on_simulator(steps=5)
    result = refine_on_device(
        loss_of(qnn),
        theta,
        qnns=[qnn],
        executor=executor,
        config=RefineConfig(steps=6, learning_rate=0.05),
        validate_fn=loss_of(qnn),
    )
    assert result.stats.programs == 6 * (1 + 2 * 2) + 1
    assert result.validation_loss < result.history[0].loss


def test_spend_limit_stops_with_the_last_completed_weights() -> None:
    budget = SpendLimit(max_shots=2 * PER_STEP * SHOTS + SHOTS)  # two steps and a bit
    executor, qnn = setup(limit=budget)
    theta = pretrained_on_simulator()
    result = refine_on_device(
        loss_of(qnn), theta, qnns=[qnn], executor=executor, config=RefineConfig(steps=5)
    )
    assert result.stopped == "spend_limit" and "spend limit" in result.reason
    assert len(result.history) == 2
    assert result.stats.shots <= budget.max_shots
    # The returned weights are exactly those after step 2: a budget-free two-step run (same seeds and idempotency
    # tokens, so the same shots) ends at the same point.
    executor2, qnn2 = setup()
    two_steps = refine_on_device(
        loss_of(qnn2), theta, qnns=[qnn2], executor=executor2, config=RefineConfig(steps=2)
    )
    np.testing.assert_allclose(np.asarray(result.params), np.asarray(two_steps.params), atol=1e-6)
    assert not np.allclose(np.asarray(result.params), np.asarray(theta))


def test_a_dead_device_stops_with_device_offline() -> None:
    executor, qnn = setup(failures=FailureModel(device_offline=1.0, offline_s=float("inf")))
    theta = pretrained_on_simulator()
    result = refine_on_device(
        loss_of(qnn), theta, qnns=[qnn], executor=executor, config=RefineConfig(steps=3)
    )
    assert result.stopped == "device_offline" and "fall back to a simulator" in result.reason
    assert result.history == () and np.allclose(np.asarray(result.params), np.asarray(theta))


def test_other_errors_propagate() -> None:
    _, qnn = setup()
    with pytest.raises(Exception, match="expected \\[N, 4\\]|shape"):
        refine_on_device(
            lambda t: jnp.sum(qnn(jnp.zeros((1, 0)), t)),
            jnp.zeros(3),
            qnns=[qnn],
            executor=Executor(DeviceEmulator(EmulatorConfig(device=GRID))),
        )
