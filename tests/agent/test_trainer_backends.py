"""The daemon's training and evaluation jobs (real child processes, the tiny model) on each circuit backend.

The JAX simulator and qsim are both exact, so one recipe trained on either must give the same adapter up to float
error (qsim's gradients come from the parameter-shift rule, JAX's from the adjoint method: two independent routes
to the same numbers). The emulator samples shots on a noisy device model: it must train, count every program and
shot in the metrics, and land near the exact result, not on it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

import policies
from agent.child.runner import ChildRunner
from agent.child.trainer import ChildTrainer
from agent.config import load_config
from agent.daemon.metrics import QthaMetrics, new_registry
from agent.daemon.training_observer import DaemonTrainingObserver
from agent.store import open_store
from tests.fixtures.tiny_model import write_tiny_hf

pytestmark = pytest.mark.slow

RECIPE = policies.Recipe("qtha", "weight", 2, 1, 2, 0, 0.05, 3, "jax", batch_size=2, seq_len=256, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("tiny") / "model")


def _train_and_evaluate(tiny: Path, root: Path, backend: str) -> tuple[Any, Any, QthaMetrics]:
    state = root / backend
    config = load_config(
        None,
        state_dir=str(state),
        model={"source": str(tiny)},
        training={"steps": 3, "seq_len": 256, "batch_size": 2},
        evaluation={"examples": 4, "max_new_tokens": 2, "batch_size": 4},
        quantum={"backend": backend, "shots": 400},
    )
    state.mkdir(parents=True)
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    metrics = QthaMetrics(new_registry(), version="test", backends=(backend,))
    trainer = ChildTrainer(config, ChildRunner(), observer=DaemonTrainingObserver(store, metrics, lambda _: None))
    steps: list[int] = []
    workdir = state / "cycles" / "1"
    workdir.mkdir(parents=True)
    try:
        outcome = trainer.train(dataclasses.replace(RECIPE, backend=backend), workdir, resume_from=None, parent_dir=None,
                                progress=lambda step, _ckpt: steps.append(step))
        evaluation = trainer.evaluate(outcome.artifact_dir, version_id=f"{backend}-1")
    finally:
        store.close()
    assert max(steps) == 3
    return outcome, evaluation, metrics


@pytest.fixture(scope="module")
def exact(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """The recipe trained and evaluated on the JAX simulator: the reference of both tests."""
    run, evaluation, _ = _train_and_evaluate(tiny, tmp_path_factory.mktemp("exact"), "jax")
    return run, evaluation


def test_qsim_trains_the_same_adapter_as_the_jax_simulator(tiny: Path, exact: tuple[Any, Any], tmp_path: Path) -> None:
    jax_run, jax_eval = exact
    qsim_run, qsim_eval, metrics = _train_and_evaluate(tiny, tmp_path, "qsim")
    assert jax_run.metrics["trainable_params"] == qsim_run.metrics["trainable_params"] > 0
    assert qsim_run.metrics["train_loss_final"] == pytest.approx(jax_run.metrics["train_loss_final"], abs=1e-3)
    assert qsim_run.metrics["train_cpu_s"] > 0
    assert set(qsim_eval.scores) == set(jax_eval.scores) and len(jax_eval.scores) == 4
    for key, score in jax_eval.scores.items():
        assert qsim_eval.scores[key] == pytest.approx(score, abs=1e-3)
    # Circuits ran on qsim (one per adapted module per step, at least) and no shots were charged.
    assert metrics.value("qtha_quantum_circuits_total", backend="qsim") >= 3
    assert metrics.value("qtha_quantum_shots_total", backend="qsim") == 0


def test_the_emulated_device_trains_and_every_shot_is_counted(
    tiny: Path, exact: tuple[Any, Any], tmp_path: Path
) -> None:
    (exact_run, exact_eval), (run, evaluation, metrics) = exact, _train_and_evaluate(tiny, tmp_path, "emulator")
    assert math.isfinite(run.metrics["train_loss_final"]) and run.metrics["nonfinite_steps"] == 0
    # Shot noise and the device's noise model move the result a little, not a lot.
    assert run.metrics["train_loss_final"] == pytest.approx(exact_run.metrics["train_loss_final"], rel=0.1)
    programs = metrics.value("qtha_quantum_circuits_total", backend="emulator")
    assert programs > 3 and metrics.value("qtha_quantum_shots_total", backend="emulator") == 400 * programs
    assert len(evaluation.scores) == len(exact_eval.scores) == 4


def _train_on_device(tiny: Path, state: Path, **quantum_keys: Any) -> tuple[Any, QthaMetrics]:
    """One training task on a device backend configured by ``quantum_keys``; the outcome or the raised error."""
    from agent.child.trainer import TrainingFailedError

    config = load_config(
        None,
        state_dir=str(state),
        model={"source": str(tiny)},
        training={"steps": 2, "seq_len": 256, "batch_size": 2},
        quantum=quantum_keys,
    )
    state.mkdir(parents=True)
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    backend = quantum_keys["backend"]
    metrics = QthaMetrics(new_registry(), version="test", backends=(backend,))
    workdir = state / "cycles" / "1"
    workdir.mkdir(parents=True)
    trainer = ChildTrainer(config, ChildRunner(), observer=DaemonTrainingObserver(store, metrics, lambda _: None))
    try:
        outcome = trainer.train(
            dataclasses.replace(RECIPE, steps=2, backend=backend), workdir, resume_from=None, parent_dir=None,
            progress=lambda _step, _ckpt: None,
        )
    except TrainingFailedError as err:
        outcome = err
    finally:
        store.close()
    return outcome, metrics


def test_spsa_on_origins_local_simulator_trains_through_the_configured_sampler(tiny: Path, tmp_path: Path) -> None:
    """backend = sampler with Origin's CPUQVM (the OpenQASM path QCloud receives) and gradient = spsa."""
    pytest.importorskip("pyqpanda3", reason="the origin extra (pyqpanda3) is not installed")
    run, metrics = _train_on_device(
        tiny, tmp_path / "origin", backend="sampler", sampler="quantum.backends.origin:OriginLocalSampler",
        shots=200, gradient="spsa", spsa_samples=1,
    )
    assert not isinstance(run, Exception), run
    assert math.isfinite(run.metrics["train_loss_final"]) and run.metrics["device_fell_back"] == 0.0
    programs = metrics.value("qtha_quantum_circuits_total", backend="sampler")
    # 4 adapted modules (2 layers x q_proj, v_proj) x 2 steps; per module and step SPSA's 2 perturbed circuits
    # plus the forward evaluations (parameter shift would add 24 shifted circuits for this 2-qubit, 1-layer QNN).
    per_module_step = programs / (4 * 2)
    assert per_module_step == int(per_module_step) and 3 <= per_module_step <= 4
    assert metrics.value("qtha_quantum_shots_total", backend="sampler") == 200 * programs


def test_a_cycle_over_its_shot_cap_fails_with_the_spend_limit_and_counts_what_ran(tiny: Path, tmp_path: Path) -> None:
    latency = tmp_path / "latency.json"
    latency.write_text('{"queue_s": 0.0, "queue_jitter_s": 0.0}')
    failed, metrics = _train_on_device(
        tiny, tmp_path / "capped", backend="emulator", emulator_rows=2, emulator_cols=2,
        emulator_latency_file=str(latency), shots=100, gradient="spsa", max_shots_per_cycle=450,
    )
    assert isinstance(failed, Exception) and "SpendLimitError" in str(failed) and "spend limit" in str(failed)
    shots = metrics.value("qtha_quantum_shots_total", backend="emulator")
    assert 0 < shots <= 450 and shots % 100 == 0  # what ran is counted; nothing beyond the cap was run
