"""The compiled steps of the decoding engine: prefill one prompt into a cache slot, decode a chunk of tokens for
the live slots, sample. Pure JAX; weights always enter as arguments (a 135M-parameter closure exhausts memory).

The slot cache holds keys and values ``[layers, slots, capacity, kv_heads, head_dim]``. A sequence in slot ``b``
occupies positions ``0 … pos[b]-1`` (no left padding), so its rotary positions are its cache positions and
sequences of any length share one fixed-shape batch. Compiled shapes: one prefill per length bucket, one decode
chunk per (slot bucket, attention span bucket), one sampler — never one per request.

Blocks run unrolled by default. With ``scan=True`` (see :func:`split_model`) and blocks of one structure (always
for a plain or merged model, and for adapters on every layer) they run under ``lax.scan`` over stacked weights:
the program holds one block instead of 30 and compiles ~2-3x faster, but each step slices every block's weights
out of the stack, which measured ~20% slower decoding on SmolLM2 (CPU).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..config import LMConfig
from ..rope import apply_rotary, inverse_frequencies, rotary_cos_sin

__all__ = [
    "ModelParts", "SlotCache", "copy_slot", "decode_chunk", "empty_cache", "prefill", "sample_tokens", "split_model",
]


class SlotCache(NamedTuple):
    """Keys and values ``[layers, slots, capacity, kv_heads, head_dim]`` (a pytree, donated to each step)."""

    keys: jax.Array
    values: jax.Array


class ModelParts(NamedTuple):
    """The static half of a split model (hashable: a ``jit`` static argument).

    Attributes:
        embed, norm, lm_head: graph definitions of those modules (``lm_head`` None when tied).
        layers: one graph definition shared by every block (stacked weights, scanned), or one per block.
        stacked: whether the blocks' weights are stacked.
        config: the architecture.
    """

    embed: Any
    norm: Any
    lm_head: Any
    layers: tuple[Any, ...]
    stacked: bool
    config: LMConfig


def split_model(model: nnx.Module, *, scan: bool = False) -> tuple[ModelParts, tuple[Any, ...]]:
    """The model as static parts and a pytree of weights ``(embed, norm, lm_head, layers)``.

    Args:
        model: a :class:`model.CausalLM`, adapted or not.
        scan: stack the blocks' weights along a new leading axis (a copy) so they run under ``lax.scan``, when
            all blocks share one structure.
    """
    embed_gd, embed_st = nnx.split(model.embed_tokens)
    norm_gd, norm_st = nnx.split(model.norm)
    head_gd, head_st = (None, None) if model.lm_head is None else nnx.split(model.lm_head)
    splits = [nnx.split(block) for block in model.layers]
    graphdefs = [gd for gd, _ in splits]
    stacked = scan and all(gd == graphdefs[0] for gd in graphdefs)
    if stacked:
        layer_gds = (graphdefs[0],)
        layer_st = jax.tree.map(lambda *xs: jnp.stack(xs), *[st for _, st in splits])
    else:
        layer_gds = tuple(graphdefs)
        layer_st = tuple(st for _, st in splits)
    parts = ModelParts(embed_gd, norm_gd, head_gd, layer_gds, stacked, model.config)
    return parts, (embed_st, norm_st, head_st, layer_st)


def empty_cache(cfg: LMConfig, slots: int, capacity: int, dtype=jnp.float32) -> SlotCache:
    shape = (cfg.num_hidden_layers, slots, capacity, cfg.num_key_value_heads, cfg.head_dim)
    return SlotCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _attend(attn, q: jax.Array, keys: jax.Array, values: jax.Array, allowed: jax.Array) -> jax.Array:
    """Grouped-query attention of ``q [B, T, H, D]`` over ``keys/values [B, S, KVH, D]`` where ``allowed [B, T, S]``.

    The same arithmetic as :class:`model.lm.Attention` (grouped heads, finite mask floor), so greedy decoding here
    picks the tokens ``model.generate`` picks.
    """
    b, t = q.shape[:2]
    groups = attn.num_heads // attn.num_kv_heads
    qg = q.reshape(b, t, attn.num_kv_heads, groups, attn.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(q.dtype)) / jnp.sqrt(jnp.float32(attn.head_dim))
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(q.dtype))
    return attn.o_proj(out.reshape(b, t, attn.num_heads * attn.head_dim))


def _project_qkv(attn, x: jax.Array, positions: jax.Array, inv_freq: jax.Array):
    b, t, _ = x.shape
    q = attn.q_proj(x).reshape(b, t, attn.num_heads, attn.head_dim)
    k = attn.k_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    v = attn.v_proj(x).reshape(b, t, attn.num_kv_heads, attn.head_dim)
    cos, sin = rotary_cos_sin(inv_freq, positions)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def _run_layers(parts: ModelParts, layer_weights, x: jax.Array, cache: SlotCache, block_fn):
    """Applies ``block_fn(block, layer_index, x, cache) -> (x, cache)`` for every block, scanned or unrolled."""
    if parts.stacked:
        def body(carry, xs):
            x, cache = carry
            weights, index = xs
            return block_fn(nnx.merge(parts.layers[0], weights), index, x, cache), None

        count = parts.config.num_hidden_layers
        (x, cache), _ = jax.lax.scan(body, (x, cache), (layer_weights, jnp.arange(count)))
        return x, cache
    for index, (gd, weights) in enumerate(zip(parts.layers, layer_weights, strict=True)):
        x, cache = block_fn(nnx.merge(gd, weights), jnp.int32(index), x, cache)
    return x, cache


def _logits(parts: ModelParts, weights, h: jax.Array) -> jax.Array:
    embed_st, norm_st, head_st, _ = weights
    h = nnx.merge(parts.norm, norm_st)(h)
    if parts.lm_head is None:
        out = nnx.merge(parts.embed, embed_st).attend(h)
    else:
        out = nnx.merge(parts.lm_head, head_st)(h)
    return out.astype(jnp.float32)


def _layer_slice(array: jax.Array, index: jax.Array, rows: int, span: int) -> jax.Array:
    """``array[index, :rows, :span]`` with a traced layer index."""
    _, _, _, heads, dim = array.shape
    return jax.lax.dynamic_slice(array, (index, 0, 0, 0, 0), (1, rows, span, heads, dim))[0]


def _prefill_forward(parts: ModelParts, weights, tokens: jax.Array, length: jax.Array, cache: SlotCache,
                     slot: jax.Array):
    """Runs one right-padded prompt ``tokens [1, L]`` (``length`` real tokens), writes its keys and values at
    positions ``0 … L-1`` of ``slot``, and returns the logits after the last real token ``[1, V]``."""
    _, t = tokens.shape
    positions = jnp.arange(t, dtype=jnp.int32)[None]
    inv_freq = jnp.asarray(inverse_frequencies(parts.config))
    # Causal attention among the prompt's own tokens: padding after the real ones is never seen by them.
    allowed = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None]

    def block_fn(block, index, x, cache):
        attn = block.self_attn
        q, k, v = _project_qkv(attn, block.input_layernorm(x), positions, inv_freq)
        at = (index, slot, 0, 0, 0)
        cache = SlotCache(
            jax.lax.dynamic_update_slice(cache.keys, k[None].astype(cache.keys.dtype), at),
            jax.lax.dynamic_update_slice(cache.values, v[None].astype(cache.values.dtype), at),
        )
        x = x + _attend(attn, q, k, v, allowed)
        return x + block.mlp(block.post_attention_layernorm(x)), cache

    x = nnx.merge(parts.embed, weights[0])(tokens).astype(jnp.float32)
    x, cache = _run_layers(parts, weights[3], x, cache, block_fn)
    last = jax.lax.dynamic_slice_in_dim(x, length - 1, 1, axis=1)
    return _logits(parts, weights, last)[:, 0], cache


def _decode_forward(parts: ModelParts, weights, tokens: jax.Array, pos: jax.Array, cache: SlotCache, span: int):
    """One token for each of the first ``B`` slots: ``tokens [B]`` at positions ``pos [B]``; writes them into the
    cache and attends over the first ``span`` positions. Returns logits ``[B, V]`` and the cache. Writes at
    ``pos >= capacity`` are dropped. Slots from ``B`` on are neither read nor written."""
    b = tokens.shape[0]
    inv_freq = jnp.asarray(inverse_frequencies(parts.config))
    rows = jnp.arange(b)
    allowed = (jnp.arange(span)[None, :] <= pos[:, None])[:, None, :]  # [B, 1, span]

    def block_fn(block, index, x, cache):
        attn = block.self_attn
        q, k, v = _project_qkv(attn, block.input_layernorm(x), pos[:, None], inv_freq)
        cache = SlotCache(
            cache.keys.at[index, rows, pos].set(k[:, 0].astype(cache.keys.dtype), mode="drop"),
            cache.values.at[index, rows, pos].set(v[:, 0].astype(cache.values.dtype), mode="drop"),
        )
        keys = _layer_slice(cache.keys, index, b, span)
        values = _layer_slice(cache.values, index, b, span)
        x = x + _attend(attn, q, keys, values, allowed)
        return x + block.mlp(block.post_attention_layernorm(x)), cache

    x = nnx.merge(parts.embed, weights[0])(tokens[:, None]).astype(jnp.float32)
    x, cache = _run_layers(parts, weights[3], x, cache, block_fn)
    return _logits(parts, weights, x)[:, 0], cache


def _sample(logits, keys, index, temperature, top_p, *, top_k: int):
    """Greedy where ``temperature == 0``, else temperature + nucleus sampling among the ``top_k`` best tokens.

    Each row draws with ``fold_in(key, index)``: its own request's key and the token's index in its completion,
    so a seeded answer does not depend on which slot it sits in or what else runs.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw():
        k = min(top_k, logits.shape[-1])
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        top_vals, top_ids = jax.lax.top_k(scaled, k)  # sorted, most likely first
        probs = jax.nn.softmax(top_vals, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = before < top_p[:, None]  # the most likely token is always kept
        masked = jnp.where(keep, top_vals, -jnp.inf)
        row_keys = jax.vmap(lambda kd, i: jax.random.fold_in(jax.random.wrap_key_data(kd), i))(keys, index)
        picked = jax.vmap(jax.random.categorical)(row_keys, masked)
        return jnp.take_along_axis(top_ids, picked[:, None], axis=-1)[:, 0].astype(jnp.int32)

    # The top-k and draw cost nothing when every slot is greedy.
    sampled = jax.lax.cond(jnp.any(temperature > 0), draw, lambda: greedy)
    return jnp.where(temperature > 0, sampled, greedy)


@partial(jax.jit, static_argnames=("parts",), donate_argnames=("cache",))
def prefill(parts: ModelParts, weights, cache: SlotCache, tokens, length, slot):
    """Logits ``[1, V]`` after the prompt ``tokens [1, L]`` (``length`` real), and the cache with it in ``slot``."""
    return _prefill_forward(parts, weights, tokens, length, cache, slot)


@partial(jax.jit, donate_argnames=("cache",))
def copy_slot(cache: SlotCache, source, target) -> SlotCache:
    """The cache with slot ``source``'s keys and values also in slot ``target``.

    A request's ``n`` choices share one prompt: one prefill and ``n - 1`` copies of its rows (a memory copy of
    ``layers x capacity`` rows instead of the prompt's whole forward pass). Positions past the prompt come along
    too; decoding never attends beyond a slot's own position, so they are never read.
    """
    def copy(array: jax.Array) -> jax.Array:
        row = jax.lax.dynamic_index_in_dim(array, source, axis=1, keepdims=True)
        return jax.lax.dynamic_update_index_in_dim(array, row, target, axis=1)

    return SlotCache(copy(cache.keys), copy(cache.values))


@partial(jax.jit, static_argnames=("parts", "span", "steps", "top_k"), donate_argnames=("cache",))
def decode_chunk(parts: ModelParts, weights, cache: SlotCache, tokens, pos, keys, index, temperature, top_p, *,
                 span: int, steps: int, top_k: int):
    """Decodes ``steps`` tokens for each of the first ``B`` slots in one compiled loop.

    Only the first ``B`` slots (the length of ``tokens``) run: the engine keeps live sequences in the lowest slots
    and picks ``B`` from a few buckets, so one request does not pay for a full batch.

    Args:
        tokens: ``[B]`` each slot's latest token (not yet in the cache), at position ``pos [B]``.
        keys: ``[B, 2]`` uint32 raw PRNG key data per slot; ``index [B]``: the completion index of ``tokens``.
        temperature, top_p: ``[B]`` per slot.
        span: attend over the first ``span`` cache positions (must exceed ``pos + steps - 1`` of live slots).

    Returns:
        ``[B, steps]`` new tokens (token ``i`` follows input position ``pos + i``) and the cache.
    """
    out = jnp.zeros((tokens.shape[0], steps), jnp.int32)

    def step(i, carry):
        cache, token, out = carry
        logits, cache = _decode_forward(parts, weights, token, pos + i, cache, span)
        token = _sample(logits, keys, index + i + 1, temperature, top_p, top_k=top_k)
        return cache, token, out.at[:, i].set(token)

    cache, _, out = jax.lax.fori_loop(0, steps, step, (cache, tokens, out))
    return out, cache


@partial(jax.jit, static_argnames=("top_k",))
def sample_tokens(logits, keys, index, temperature, top_p, *, top_k: int):
    """:func:`_sample` on its own (a prompt's first token comes from the prefill's logits)."""
    return _sample(logits, keys, index, temperature, top_p, top_k=top_k)
