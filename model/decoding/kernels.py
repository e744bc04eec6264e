"""The compiled steps of the decoding engine: prefill one prompt into a cache slot, decode a chunk of tokens for
every slot, sample. Pure JAX; weights always enter as arguments (a 135M-parameter closure exhausts memory).

The slot cache holds, per layer, keys and values ``[slots, capacity, kv_heads, head_dim]``. A sequence in slot
``b`` occupies positions ``0 … pos[b]-1`` (no left padding), so its rotary positions are its cache positions and
sequences of any length share one fixed-shape batch. Compiled shapes: one prefill per length bucket, one decode
chunk per attention span bucket, one sampler — never one per request.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ..rope import apply_rotary, inverse_frequencies, rotary_cos_sin

__all__ = ["SlotCache", "decode_chunk", "empty_cache", "prefill", "sample_tokens"]


class SlotCache(NamedTuple):
    """Per-layer keys and values ``[slots, capacity, kv_heads, head_dim]`` (a pytree, donated to each step)."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


def empty_cache(cfg, slots: int, capacity: int, dtype=jnp.float32) -> SlotCache:
    shape = (slots, capacity, cfg.num_key_value_heads, cfg.head_dim)
    return SlotCache(
        tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)),
        tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers)),
    )


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


def _logits(model, h: jax.Array) -> jax.Array:
    h = model.norm(h)
    out = model.embed_tokens.attend(h) if model.lm_head is None else model.lm_head(h)
    return out.astype(jnp.float32)


def _prefill_forward(model, tokens: jax.Array, length: jax.Array, cache: SlotCache, slot: jax.Array):
    """Runs one right-padded prompt ``tokens [1, L]`` (``length`` real tokens), writes its keys and values at
    positions ``0 … L-1`` of ``slot``, and returns the logits after the last real token ``[1, V]``."""
    _, t = tokens.shape
    positions = jnp.arange(t, dtype=jnp.int32)[None]
    inv_freq = jnp.asarray(inverse_frequencies(model.config))
    # Causal attention among the prompt's own tokens: padding after the real ones is never seen by them.
    allowed = (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None]
    x = model.embed_tokens(tokens).astype(jnp.float32)
    keys, values = [], []
    for i, block in enumerate(model.layers):
        attn = block.self_attn
        q, k, v = _project_qkv(attn, block.input_layernorm(x), positions, inv_freq)
        at = (slot, 0, 0, 0)
        keys.append(jax.lax.dynamic_update_slice(cache.keys[i], k.astype(cache.keys[i].dtype), at))
        values.append(jax.lax.dynamic_update_slice(cache.values[i], v.astype(cache.values[i].dtype), at))
        x = x + _attend(attn, q, k, v, allowed)
        x = x + block.mlp(block.post_attention_layernorm(x))
    last = jax.lax.dynamic_slice_in_dim(x, length - 1, 1, axis=1)
    return _logits(model, last)[:, 0], SlotCache(tuple(keys), tuple(values))


def _decode_forward(model, tokens: jax.Array, pos: jax.Array, cache: SlotCache, span: int):
    """One token for each of the first ``B`` slots: ``tokens [B]`` at positions ``pos [B]``; writes them into the
    cache and attends over the first ``span`` positions. Returns logits ``[B, V]`` and the cache. Writes at
    ``pos >= capacity`` are dropped. Slots from ``B`` on are neither read nor written."""
    b = tokens.shape[0]
    inv_freq = jnp.asarray(inverse_frequencies(model.config))
    rows = jnp.arange(b)
    allowed = (jnp.arange(span)[None, :] <= pos[:, None])[:, None, :]  # [B, 1, span]
    x = model.embed_tokens(tokens[:, None]).astype(jnp.float32)
    keys, values = [], []
    for i, block in enumerate(model.layers):
        attn = block.self_attn
        q, k, v = _project_qkv(attn, block.input_layernorm(x), pos[:, None], inv_freq)
        ck = cache.keys[i].at[rows, pos].set(k[:, 0].astype(cache.keys[i].dtype), mode="drop")
        cv = cache.values[i].at[rows, pos].set(v[:, 0].astype(cache.values[i].dtype), mode="drop")
        keys.append(ck)
        values.append(cv)
        x = x + _attend(attn, q, ck[:b, :span], cv[:b, :span], allowed)
        x = x + block.mlp(block.post_attention_layernorm(x))
    return _logits(model, x)[:, 0], SlotCache(tuple(keys), tuple(values))


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


@partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill(graphdef, state, cache: SlotCache, tokens, length, slot):
    """Logits ``[1, V]`` after the prompt ``tokens [1, L]`` (``length`` real), and the cache with it in ``slot``."""
    return _prefill_forward(nnx.merge(graphdef, state), tokens, length, cache, slot)


@partial(jax.jit, static_argnames=("graphdef", "span", "steps", "top_k"), donate_argnames=("cache",))
def decode_chunk(graphdef, state, cache: SlotCache, tokens, pos, keys, index, temperature, top_p, *,
                 span: int, steps: int, top_k: int):
    """Decodes ``steps`` tokens for every slot in one compiled loop.

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
    model = nnx.merge(graphdef, state)
    out = jnp.zeros((tokens.shape[0], steps), jnp.int32)

    def step(i, carry):
        cache, token, out = carry
        logits, cache = _decode_forward(model, token, pos + i, cache, span)
        token = _sample(logits, keys, index + i + 1, temperature, top_p, top_k=top_k)
        return cache, token, out.at[:, i].set(token)

    cache, _, out = jax.lax.fori_loop(0, steps, step, (cache, tokens, out))
    return out, cache


@partial(jax.jit, static_argnames=("top_k",))
def sample_tokens(logits, keys, index, temperature, top_p, *, top_k: int):
    """:func:`_sample` on its own (a prompt's first token comes from the prefill's logits)."""
    return _sample(logits, keys, index, temperature, top_p, top_k=top_k)
