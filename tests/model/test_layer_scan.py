"""Layers run as one scan (``scan_layers``): the same logits and gradients as the unrolled loop, and activation-mode
training compiles its step once."""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import load_checkpoint
from model.adapters import AdapterParam, QthaAdapterConfig, has_token_circuits, inject_adapters
from model.train import TrainConfig, train
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import counting_batches, randomise_adapters, shared_qnn, tiny_lm

ACTIVATION = QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", bond_dim=3)


@pytest.fixture(scope="module")
def tiny_activation_model():
    """The fixture checkpoint with randomised activation-mode QTHA on q_proj and v_proj of both layers."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_checkpoint(write_tiny_hf(Path(tmp) / "tiny", seed=0))
    inject_adapters(loaded.model, ACTIVATION, rngs=nnx.Rngs(0), qnn_factory=shared_qnn)
    randomise_adapters(loaded.model)
    return loaded.model


@nnx.jit(static_argnames=("scan", "remat"))  # eager op-by-op dispatch of the unrolled model is minutes
def _logits_and_adapter_grads(model, tokens, *, scan: bool, remat: bool):
    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(tokens, scan_layers=scan, remat=remat))[..., 0])

    return model(tokens, scan_layers=scan), nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam))(model)


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_equal_the_unrolled_loop_in_logits_and_gradients(tiny_activation_model, remat: bool) -> None:
    model = tiny_activation_model
    assert has_token_circuits(model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 300, size=(2, 9)), jnp.int32)
    logits, scanned = _logits_and_adapter_grads(model, tokens, scan=True, remat=remat)
    reference, unrolled = _logits_and_adapter_grads(model, tokens, scan=False, remat=remat)
    np.testing.assert_allclose(logits, reference, atol=1e-5, rtol=0)
    leaves = jax.tree.leaves(unrolled)
    assert max(float(jnp.abs(g).max()) for g in leaves) > 1e-3  # the adapters matter: the comparison can fail
    for a, b in zip(jax.tree.leaves(scanned), leaves, strict=True):
        # Entries reach ~2, where float32 summation order alone moves the last digits: 1e-5 relative as well.
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_blocks_of_different_structure_fall_back_to_the_loop() -> None:
    model = tiny_lm(0)
    inject_adapters(model, QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", bond_dim=3,
                                             targets=("layers.0.self_attn.q_proj",)),
                    rngs=nnx.Rngs(0), qnn_factory=shared_qnn)
    randomise_adapters(model)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, 5)), jnp.int32)
    np.testing.assert_allclose(model(tokens, scan_layers=True), model(tokens), atol=1e-6, rtol=0)


def _backend_compiles_during(fn) -> int:
    count = 0

    def listener(event: str, _duration: float, **_kwargs) -> None:
        nonlocal count
        count += event == "/jax/core/compile/backend_compile_duration"

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return count


def test_activation_mode_training_does_not_recompile_after_the_first_step() -> None:
    def run(steps: int) -> None:
        model = tiny_lm(0)
        inject_adapters(model, ACTIVATION, rngs=nnx.Rngs(0), qnn_factory=shared_qnn)
        result = train(model, counting_batches(steps, seed=0), TrainConfig(steps=steps, warmup_steps=0, seed=0))
        assert result.steps_done == steps and all(np.isfinite(result.losses))

    run(1)  # warm every cache that a first run fills
    # Each step beyond the first would add a compile if anything in the step retraced.
    assert _backend_compiles_during(lambda: run(2)) == _backend_compiles_during(lambda: run(5))
