"""The NNX language model against an independent numpy reference, and its cache, padding, remat and loss."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import CausalLM, LMConfig, UnsupportedModelError, causal_lm_loss, model_from_hf_tensors
from model.rope import inverse_frequencies
from tests.fixtures.tiny_model import tiny_hf_config, tiny_tensors
from tests.model.numpy_reference import reference_logits

IDS = [5, 17, 200, 3, 99, 42, 7, 250, 1, 2, 64, 128]


@nnx.jit
def _forward(lm, tokens, mask=None):
    # Compiled once per shape: eager op-by-op dispatch is much slower than compiling the tiny model.
    return lm(tokens, attention_mask=mask)


@nnx.jit
def _step(lm, tokens, cache):
    return lm(tokens, cache=cache)


def _model(**variant):
    cfg = LMConfig.from_hf_config(tiny_hf_config(**variant))
    tensors = tiny_tensors(seed=3, **variant)
    return cfg, tensors, model_from_hf_tensors(cfg, tensors, source="tiny")


@pytest.mark.parametrize(
    "variant",
    [{}, {"tie_word_embeddings": True}, {"model_type": "qwen2"}],
    ids=["llama-untied", "llama-tied", "qwen2-qkv-bias"],
)
def test_forward_matches_numpy_reference(variant) -> None:
    cfg, tensors, lm = _model(**variant)
    ours = np.asarray(_forward(lm, jnp.asarray([IDS], jnp.int32)))[0]
    ref = reference_logits(tiny_hf_config(**variant), tensors, IDS)
    assert ours.shape == (len(IDS), cfg.vocab_size)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero numbers


def test_kv_cache_prefill_then_single_steps_equals_full_forward() -> None:
    _, _, lm = _model()
    tokens = jnp.asarray([IDS, IDS[::-1]], jnp.int32)
    full = np.asarray(_forward(lm, tokens))
    cache = lm.init_cache(batch=2, capacity=16)
    parts = []
    logits, cache = _step(lm, tokens[:, :5], cache)
    parts.append(logits)
    for t in range(5, len(IDS)):
        logits, cache = _step(lm, tokens[:, t:t + 1], cache)
        parts.append(logits)
    assert int(cache.length) == len(IDS)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5)
    last = nnx.jit(lambda m, t: m(t, last_only=True))(lm, tokens)
    assert last.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(np.asarray(last)[:, 0], full[:, -1], atol=1e-5)


def test_left_padding_leaves_the_real_tokens_logits_unchanged() -> None:
    _, _, lm = _model()
    short = IDS[:7]
    pad = 4
    tokens = jnp.asarray([[0] * pad + short, IDS[:pad + 7]], jnp.int32)
    mask = jnp.asarray([[0] * pad + [1] * 7, [1] * (pad + 7)], jnp.int32)
    padded = np.asarray(_forward(lm, tokens, mask))
    alone = np.asarray(_forward(lm, jnp.asarray([short], jnp.int32)))
    np.testing.assert_allclose(padded[0, pad:], alone[0], atol=1e-5)
    np.testing.assert_allclose(padded[1], np.asarray(_forward(lm, tokens[1:]))[0], atol=1e-5)
    assert np.isfinite(padded).all()  # fully masked padding queries stay finite


def test_jit_with_weights_as_arguments_and_remat_give_same_values_and_gradients() -> None:
    _, _, lm = _model()
    graphdef, state = nnx.split(lm)
    tokens = jnp.asarray([IDS], jnp.int32)

    def loss(state, remat):
        logits = nnx.merge(graphdef, state)(tokens[:, :-1], remat=remat)
        return causal_lm_loss(logits, tokens[:, 1:], jnp.ones_like(tokens[:, 1:]))

    plain = jax.jit(jax.value_and_grad(lambda s: loss(s, False)))(state)
    remat = jax.jit(jax.value_and_grad(lambda s: loss(s, True)))(state)
    assert float(plain[0]) == pytest.approx(float(remat[0]), abs=1e-6)
    for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_causal_lm_loss_is_masked_mean_cross_entropy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5)).astype(np.float32)
    targets = np.array([[1, 4, 0], [2, 2, 3]])
    mask = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    expected = -(picked * mask).sum() / mask.sum()
    got = float(causal_lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert float(causal_lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((2, 3)))) == 0.0


def test_rope_scaling_frequencies() -> None:
    base = LMConfig.from_hf_config({**tiny_hf_config(), "rope_theta": 500000.0, "head_dim": 64, "hidden_size": 256})
    plain = inverse_frequencies(base).astype(np.float64)
    expected_plain = 500000.0 ** (-np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(plain, expected_plain, rtol=1e-6)

    linear = dataclasses.replace(base, rope_scaling=(("factor", 4.0), ("rope_type", "linear")))
    np.testing.assert_allclose(inverse_frequencies(linear), plain / 4, rtol=1e-6)

    llama3 = LMConfig.from_hf_config({**base.to_hf_config(), "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    got = inverse_frequencies(llama3)
    for f, g in zip(plain, got, strict=True):
        wavelength = 2 * math.pi / f
        if wavelength < 8192 / 4:  # short wavelengths are kept
            assert g == pytest.approx(f, rel=1e-6)
        elif wavelength > 8192:  # long wavelengths are interpolated fully
            assert g == pytest.approx(f / 8, rel=1e-6)
        else:  # in between: a blend, strictly between the two
            assert f / 8 < g < f
    assert (got < plain).any() and (got == plain.astype(np.float32)).any()


def test_rope_positions_matter_and_scaling_changes_logits() -> None:
    cfg, tensors, lm = _model()
    scaled = model_from_hf_tensors(
        dataclasses.replace(cfg, rope_scaling=(("factor", 2.0), ("rope_type", "linear"))), tensors, source="tiny")
    tokens = jnp.asarray([IDS], jnp.int32)
    plain = np.asarray(_forward(lm, tokens))
    assert not np.allclose(plain, np.asarray(_forward(scaled, tokens)), atol=1e-3)
    shifted = np.asarray(nnx.jit(lambda m, t, p: m(t, positions=p))(lm, tokens, jnp.arange(len(IDS))[None] + 3))
    # RoPE is relative: shifting every position leaves attention, hence logits, unchanged.
    np.testing.assert_allclose(shifted, plain, atol=1e-4)


def test_projections_are_plain_linear_with_in_out_kernels() -> None:
    cfg = LMConfig.from_hf_config(tiny_hf_config())
    lm = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
    attn, mlp = lm.layers[1].self_attn, lm.layers[1].mlp
    assert isinstance(attn.q_proj, nnx.Linear) and isinstance(mlp.down_proj, nnx.Linear)
    assert attn.q_proj.kernel.shape == (64, 64) and attn.k_proj.kernel.shape == (64, 32)
    assert mlp.down_proj.kernel.shape == (128, 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn'"),
        ({"rope_scaling": {"type": "linear"}}, "positive 'factor'"),
    ],
)
def test_config_rejects_what_the_model_does_not_implement(change, message) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        LMConfig.from_hf_config({**tiny_hf_config(), **change})


def test_config_round_trips_and_reads_qwen2_defaults() -> None:
    cfg = LMConfig.from_hf_config({**tiny_hf_config(), "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert LMConfig.from_hf_config(cfg.to_hf_config()) == cfg
    hash(cfg)  # usable as a static jit argument
    qwen = LMConfig.from_hf_config({k: v for k, v in tiny_hf_config(model_type="qwen2").items() if k != "head_dim"})
    assert qwen.attention_bias and qwen.head_dim == 16
