"""A decoder-only Llama-family language model in Flax NNX: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Module and attribute names mirror Hugging Face's (``layers[i].self_attn.q_proj``, ``layers[i].mlp.up_proj``, …)
so adapters can find projections by name and checkpoints map one-to-one. Every projection is a plain
``nnx.Linear`` with ``kernel [in, out]``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from quantum import FINAL_STATE_NAME

from .config import LMConfig
from .rope import apply_rotary, inverse_frequencies, rotary_cos_sin

LayerCache = tuple[jax.Array, jax.Array, jax.Array]
"""One layer's view of a :class:`KVCache` during decoding: its keys, its values, and the filled length."""
LayerKV = tuple[jax.Array, jax.Array]
"""One layer's keys and values after a decoding step (to write back into the cache)."""

# Per-block rematerialisation recomputes a block in the backward pass, but keeps the final state of any circuit
# the block simulates (QTHA activation mode): re-running a circuit costs more than the rest of the block.
_REMAT_POLICY = jax.checkpoint_policies.save_only_these_names(FINAL_STATE_NAME)


class KVCache(NamedTuple):
    """Keys and values of every layer for incremental decoding (a pytree; pass it through ``jax.jit``).

    Attributes:
        keys: per layer ``[B, S, kv_heads, head_dim]``; slot ``s`` holds the token written at step ``s``.
        values: same shapes as ``keys``.
        length: int32 scalar, how many slots are filled (the next write position).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    length: jax.Array

    @property
    def capacity(self) -> int:
        """Slots available in all (``S``)."""
        return self.keys[0].shape[1]


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm with a learned per-feature weight (computed in float32)."""

    def __init__(self, dim: int, eps: float) -> None:
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * self.weight[...]).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary positions and an optional KV cache."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs) -> None:
        d, hd = cfg.hidden_size, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nnx.Linear(d, cfg.num_attention_heads * hd, use_bias=bias, rngs=rngs)
        self.k_proj = nnx.Linear(d, cfg.num_key_value_heads * hd, use_bias=bias, rngs=rngs)
        self.v_proj = nnx.Linear(d, cfg.num_key_value_heads * hd, use_bias=bias, rngs=rngs)
        self.o_proj = nnx.Linear(cfg.num_attention_heads * hd, d, use_bias=False, rngs=rngs)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = hd

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array,
                 cache: LayerCache | None) -> tuple[jax.Array, LayerKV | None]:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
            start = jnp.int32(0)
            keys, values, new_kv = k, v, None
        else:
            cache_k, cache_v, start = cache
            keys = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, start, 0, 0))
            values = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, start, 0, 0))
            new_kv = (keys, values)
        s = keys.shape[1]
        groups = self.num_heads // self.num_kv_heads
        # Query heads sharing a KV head are grouped instead of repeating K/V: no copy of the cache per group.
        qg = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys) / jnp.sqrt(jnp.float32(self.head_dim))
        query_slot = start + jnp.arange(t)
        causal = jnp.arange(s)[None, :] <= query_slot[:, None]  # [T, S]
        allowed = causal[None, :, :] & key_mask[:, None, :].astype(bool)  # [B, T, S]
        # A finite floor rather than -inf: a fully masked row (a padding query) then stays finite, not NaN.
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out), new_kv


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs) -> None:
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nnx.Linear(d, f, use_bias=False, rngs=rngs)
        self.up_proj = nnx.Linear(d, f, use_bias=False, rngs=rngs)
        self.down_proj = nnx.Linear(f, d, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nnx.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs) -> None:
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array,
                 cache: LayerCache | None) -> tuple[jax.Array, LayerKV | None]:
        attn, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


def _run_block(block: DecoderBlock, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array,
               cache: LayerCache | None) -> tuple[jax.Array, LayerKV | None]:
    # A plain function of the block so nnx.remat can wrap it (the block's parameters become its inputs).
    return block(x, cos, sin, key_mask, cache)


def _common_graphdef(blocks: nnx.List) -> nnx.GraphDef | None:
    """The blocks' shared structure, or None when they differ (e.g. adapters on some layers only)."""
    graphdefs = [nnx.graphdef(block) for block in blocks]
    return graphdefs[0] if graphdefs and all(g == graphdefs[0] for g in graphdefs) else None


def _scan_blocks(
    graphdef: nnx.GraphDef, blocks: nnx.List, x: jax.Array, cos: jax.Array, sin: jax.Array, key_mask: jax.Array,
    remat: bool,
) -> jax.Array:
    """The blocks applied in order as one ``lax.scan`` over their stacked variables (forward only: nothing in a
    block is written during a forward pass without a cache, so the stacked copies need not be written back)."""
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[nnx.state(block) for block in blocks])

    def body(x, state):
        y, _ = nnx.merge(graphdef, state)(x, cos, sin, key_mask, None)
        return y, None

    return jax.lax.scan(jax.checkpoint(body, policy=_REMAT_POLICY) if remat else body, x, stacked)[0]


class CausalLM(nnx.Module):
    """Decoder-only causal language model (float32).

    Example:
        >>> lm = CausalLM(cfg, rngs=nnx.Rngs(0))
        >>> logits = lm(jnp.zeros((2, 5), jnp.int32))          # [2, 5, vocab]
        >>> cache = lm.init_cache(batch=2, capacity=32)
        >>> logits, cache = lm(prompt_ids, attention_mask=mask, cache=cache)  # prefill, then one token a call
    """

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs) -> None:
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            None if cfg.tie_word_embeddings else nnx.Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, rngs=rngs)
        )

    def init_cache(self, batch: int, capacity: int, dtype=jnp.float32) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``capacity`` tokens (prompt + generated)."""
        c = self.config
        shape = (batch, capacity, c.num_key_value_heads, c.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers))
        return KVCache(zeros, zeros, jnp.int32(0))

    def __call__(
        self,
        tokens: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        remat: bool = False,
        last_only: bool = False,
        scan_layers: bool = False,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Next-token logits.

        Args:
            tokens: int32 ``[B, T]``.
            attention_mask: 1 for real tokens, 0 for padding, over the key slots: ``[B, T]`` without a cache,
                ``[B, cache.capacity]`` with one (slots not yet written may be anything; they are masked
                causally). Default: all ones.
            positions: int32 ``[B, T]`` rotary positions. Default: without a mask ``0..T-1`` (offset by
                ``cache.length``); with a mask, the count of real tokens before each slot, so left padding does
                not shift positions.
            cache: a :class:`KVCache`; the tokens are written at ``cache.length`` and the updated cache returned.
            remat: recompute each block in the backward pass (``jax.checkpoint``) to save training memory.
            last_only: project only the last position to the vocabulary (``[B, 1, vocab]``): a generation prefill
                needs nothing else, and the vocabulary projection of every prompt token is a large waste.
            scan_layers: run the blocks as one ``lax.scan`` over their stacked variables (without a cache, when
                every block has the same structure), so the block, adapters included, is compiled once instead of
                once per layer: what makes per-token circuits (QTHA activation mode) compile in seconds. Stacking
                copies the blocks' weights each call (~0.4 GB for SmolLM2-135M), so it is off by default.

        Returns:
            float32 logits ``[B, T, vocab]`` (``[B, 1, vocab]`` with ``last_only``); with a cache,
            ``(logits, new_cache)``.
        """
        b, t = tokens.shape
        start = jnp.int32(0) if cache is None else cache.length
        key_len = t if cache is None else cache.capacity
        key_mask = jnp.ones((b, key_len), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        if key_mask.shape != (b, key_len):
            raise ValueError(f"attention_mask has shape {key_mask.shape}; expected {(b, key_len)} (batch, key slots)")
        if positions is None:
            if attention_mask is None:
                positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
            else:
                before = jnp.cumsum(key_mask, axis=1) - 1  # real tokens up to and including each slot, minus one
                positions = jnp.maximum(jax.lax.dynamic_slice_in_dim(before, start, t, axis=1), 0)
        cos, sin = rotary_cos_sin(jnp.asarray(inverse_frequencies(self.config)), positions)
        x = self.embed_tokens(tokens).astype(jnp.float32)
        block_fn = nnx.remat(_run_block, policy=_REMAT_POLICY) if remat else _run_block
        new_keys, new_values = [], []
        graphdef = _common_graphdef(self.layers) if scan_layers and cache is None else None
        if graphdef is not None:
            x = _scan_blocks(graphdef, self.layers, x, cos, sin, key_mask, remat)
        for i, block in enumerate(self.layers if graphdef is None else ()):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i], start)
            x, kv = block_fn(block, x, cos, sin, key_mask, layer_cache)
            if kv is not None:
                new_keys.append(kv[0])
                new_values.append(kv[1])
        x = self.norm(x[:, -1:] if last_only else x)
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = logits.astype(jnp.float32)
        if cache is None:
            return logits
        return logits, KVCache(tuple(new_keys), tuple(new_values), start + t)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood ``[B, T]`` of ``targets`` under ``logits [B, T, V]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def causal_lm_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the positions where ``mask`` is non-zero.

    Args:
        logits: ``[B, T, V]`` from the model run on the inputs.
        targets: int ``[B, T]``, already shifted (``targets[:, t]`` is the token after input ``t``), as in
            :class:`model.data.TokenizedData`.
        mask: ``[B, T]`` weights, 1 where the target counts (response tokens for chat data), 0 elsewhere.

    Returns:
        A float32 scalar; 0 when the mask is empty (rather than NaN).
    """
    mask = mask.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
