"""Acceptance: a hardware-in-the-loop cycle with the tiny model on the emulator.

Classical adapter parts (MPO cores, core scale) and the QNN angles are trained on the JAX simulator; then the QNN
angles alone are refined on the emulated device through the executor (parameter-shift gradients from shots), and
the candidate is validated on the device. Shots and cost are recorded in the executor's stats.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import load_checkpoint
from model.adapters import QnnProbs, QthaAdapter, QthaAdapterConfig, inject_adapters
from model.lm import causal_lm_loss
from model.train import TrainConfig, train
from quantum import build_circuit
from quantum.emulator import Calibration, DeviceEmulator, DeviceSpec, EmulatorConfig
from quantum.executor import Executor
from quantum.hardware.loop import DeviceQnn, RefineConfig, refine_on_device
from quantum.hardware.shots import ExecutorBackend
from quantum.qpu import SimulatedDeviceClock
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import counting_batches

TRAIN = counting_batches(6, seed=0, batch=4, length=12)
HELD_OUT = counting_batches(1, seed=1, batch=4, length=12)
SHOTS = 1000


@nnx.jit
def _batch_loss(model: nnx.Module, inputs, targets, mask):
    return causal_lm_loss(model(inputs), targets, mask)


def mean_loss(model: nnx.Module, batches) -> float:
    return float(np.mean([_batch_loss(model, b.inputs, b.targets, b.loss_mask) for b in batches]))


def _module_paths(state, name: str) -> list[str]:
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    return [p[: p.index(name)] for p in paths]


@pytest.mark.slow
def test_hardware_in_the_loop_cycle_with_the_tiny_model() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lm = load_checkpoint(write_tiny_hf(Path(tmp) / "tiny")).model
    inject_adapters(lm, QthaAdapterConfig(n_qubits=2, n_layers=1, qnn_mode="weight"), rngs=nnx.Rngs(1))
    adapters = [m for _, m in nnx.iter_modules(lm) if isinstance(m, QthaAdapter)]
    assert len(adapters) == 4  # q_proj and v_proj of both layers
    base_loss = mean_loss(lm, HELD_OUT)

    # 1. Simulator: the classical parts and the angles, exact gradients.
    started = time.perf_counter()
    train(lm, TRAIN, TrainConfig(steps=25, learning_rate=2e-2, warmup_steps=3, remat=False))
    simulator_loss = mean_loss(lm, HELD_OUT)
    simulator_s = time.perf_counter() - started
    assert simulator_loss < base_loss

    # 2. Device: the same circuit on the emulated QPU, every adapter's QNN through one executor.
    device = DeviceSpec(name="grid-2x3", rows=2, cols=3)
    calibration = Calibration.synthetic(device, seed=2)
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(EmulatorConfig(device=device, seed=5), calibration=calibration, clock=clock)
    executor = Executor(emulator, clock=clock, client_id="cycle")
    backend = ExecutorBackend(executor, repetitions=SHOTS, confusions_for=calibration.confusion_matrices)
    qnn = DeviceQnn(build_circuit(adapters[0].spec), backend)
    for adapter in adapters:
        adapter.qnn = qnn

    # Weight mode keeps each module's P(θ) in a QnnProbs variable; the device loss recomputes them from the angles
    # (one device circuit per module) and merges them in, without mutating the model inside the trace.
    graphdef, thetas, probs, rest = nnx.split(lm, nnx.PathContains("theta"), QnnProbs, ...)
    probs_tree = jax.tree.structure(probs)
    assert _module_paths(thetas, "theta") == _module_paths(probs, "probs")  # leaves pair up module by module
    zeros = jnp.zeros((1, 0), jnp.float32)

    def loss_on(batches):
        # One forward pass over all examples: each module's circuit runs once per evaluation, not per batch.
        inputs, targets, mask = (
            jnp.concatenate([getattr(b, f) for b in batches]) for f in ("inputs", "targets", "loss_mask")
        )

        def loss(theta_state):
            stacked = jnp.stack(jax.tree.leaves(theta_state))  # same module order as the probs leaves
            device_probs = jax.vmap(lambda t: qnn(zeros, t)[0])(stacked)
            model = nnx.merge(graphdef, theta_state, jax.tree.unflatten(probs_tree, list(device_probs)), rest)
            return causal_lm_loss(model(inputs), targets, mask)

        return loss

    started = time.perf_counter()
    result = refine_on_device(
        loss_on(TRAIN[:2]),
        thetas,
        qnns=[qnn],
        executor=executor,
        config=RefineConfig(steps=2, learning_rate=0.02),
        validate_fn=loss_on(HELD_OUT),
    )
    device_s = time.perf_counter() - started
    stats = result.stats
    per_step = 4 * (1 + 4 * 2 + 4 * 4)  # per adapter: forward + shifted circuits of 4 RY and 4 CRZ angles
    print(
        f"held-out loss: base {base_loss:.4f}, simulator {simulator_loss:.4f}, device-validated candidate "
        f"{result.validation_loss:.4f}; device steps {[round(h.loss, 4) for h in result.history]}; "
        f"{stats.programs} programs, {stats.shots} shots, cost {stats.cost:.2f}, {stats.jobs_completed} jobs; "
        f"wall: simulator stage {simulator_s:.1f}s, device stage {device_s:.1f}s"
    )
    assert result.stopped == "completed" and len(result.history) == 2
    assert stats.programs == 2 * per_step + 4  # two steps, then one validation forward per adapter
    assert stats.shots == stats.programs * SHOTS and stats.cost > 0
    assert emulator.billing().shots == stats.shots and emulator.billing().cost == stats.cost
    assert result.validation_loss < base_loss  # the candidate, measured on the device, beats the base
    assert abs(result.validation_loss - simulator_loss) < 0.1 * simulator_loss  # noise costs little here
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), result.params, thetas))
    assert all(m > 0 for m in moved)  # every adapter's angles were refined on the device
