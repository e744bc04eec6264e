"""Merging LoRA and weight-mode QTHA into the base weights: same logits as the adapted model; activation mode refused."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from model import (
    CausalLM,
    UnmergeableAdapterError,
    adapted_modules,
    is_mergeable,
    load_checkpoint,
    merge_adapters,
)
from model.adapters import LoraConfig, QthaAdapterConfig, inject_adapters
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import randomise_adapters, shared_qnn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_hf(tmp_path_factory.mktemp("merge") / "tiny")


@nnx.jit
def _forward(lm, tokens):
    return lm(tokens)


def _tokens(loaded):
    tok = loaded.tokenizer
    return np.asarray([tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 7?"}]))])


@pytest.mark.parametrize(
    "config",
    [LoraConfig(rank=4, targets=TARGETS),
     QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="weight", targets=TARGETS)],
    ids=["lora", "qtha-weight"],
)
def test_merged_logits_equal_the_adapted_model_within_1e_4(tiny_dir, config) -> None:
    loaded = load_checkpoint(tiny_dir)
    base_logits = np.asarray(_forward(loaded.model, _tokens(loaded)))
    inject_adapters(loaded.model, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    randomise_adapters(loaded.model, scale=0.1)
    adapted = np.asarray(_forward(loaded.model, _tokens(loaded)))
    assert is_mergeable(loaded.model)
    merged = merge_adapters(loaded.model)
    assert isinstance(merged, CausalLM) and not adapted_modules(merged)
    out = np.asarray(_forward(merged, _tokens(loaded)))
    assert np.abs(adapted - base_logits).max() > 1e-1  # the adapter changes the outputs measurably
    np.testing.assert_allclose(out, adapted, atol=1e-4, rtol=0)
    # The adapted model is left as it was (still adapted, same outputs).
    assert adapted_modules(loaded.model)
    np.testing.assert_array_equal(np.asarray(_forward(loaded.model, _tokens(loaded))), adapted)


def test_activation_mode_is_refused_with_the_reason(tiny_dir) -> None:
    loaded = load_checkpoint(tiny_dir)
    config = QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="activation", fusion="elementwise")
    inject_adapters(loaded.model, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    assert not is_mergeable(loaded.model)
    with pytest.raises(UnmergeableAdapterError, match="activation-mode QTHA.*per-token"):
        merge_adapters(loaded.model)


def test_a_model_without_adapters_merges_to_an_equal_copy(tiny_dir) -> None:
    loaded = load_checkpoint(tiny_dir)
    merged = merge_adapters(loaded.model)
    assert merged is not loaded.model
    np.testing.assert_array_equal(
        np.asarray(_forward(merged, _tokens(loaded))), np.asarray(_forward(loaded.model, _tokens(loaded))))
