"""Greedy, batched generation with left padding and a KV cache (one compiled loop per shape)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .tokenizer import Tokenizer


def generate(
    model: nnx.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    chat: bool = True,
    use_cache: bool = True,
    pad_to_multiple: int = 16,
) -> list[str]:
    """Greedy completions of ``prompts``, decoded without special tokens.

    Args:
        model: a :class:`model.CausalLM` (or a module with the same call signature, e.g. with adapters).
        tokenizer: its tokenizer.
        prompts: user messages (``chat=True``, rendered with the chat template and the assistant header) or raw
            text (``chat=False``).
        max_new_tokens: the most tokens generated per prompt; each stops earlier at EOS / end of turn.
        chat: render prompts with the chat template.
        use_cache: decode with a KV cache (default); ``False`` recomputes the whole sequence each step (slow; a
            reference for tests).
        pad_to_multiple: prompt lengths are padded up to a multiple of this so nearby lengths share one compile.

    Returns:
        One completion per prompt.

    Example:
        >>> generate(lm, tok, ["What is 12 plus 7?"], max_new_tokens=64)
        ['12 + 7 = 19 ...']
    """
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) if chat else p for p in prompts]
    ids = generate_ids(
        model,
        tokenizer.encode_batch(texts),
        max_new_tokens=max_new_tokens,
        stop_ids=sorted(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
        use_cache=use_cache,
        pad_to_multiple=pad_to_multiple,
    )
    return [tokenizer.decode(seq) for seq in ids]


def generate_ids(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    use_cache: bool = True,
    pad_to_multiple: int = 16,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, each cut before its first stop token.

    Raises:
        ValueError: no prompts, an empty prompt, or ``max_new_tokens < 1``.
    """
    if not prompts:
        raise ValueError("no prompts to generate from")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; it must be at least 1")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"prompt(s) {empty} encode to no tokens; give each prompt some text")
    longest = max(len(p) for p in prompts)
    width = -(-longest // pad_to_multiple) * pad_to_multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):  # left padding: every prompt ends at the same slot
        tokens[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    graphdef, state = nnx.split(model)
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    step = _greedy_cached if use_cache else _greedy_recompute
    out = np.asarray(step(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask), stops, max_new_tokens))
    results = []
    for row in out:
        seq = row.tolist()
        cut = next((i for i, t in enumerate(seq) if t in set(stop_ids) or t < 0), len(seq))
        results.append(seq[:cut])
    return results


# Positions never written are -1, so a caller can tell "stopped" from "generated the pad token".
_UNWRITTEN = -1


@partial(jax.jit, static_argnums=(0, 5))
def _greedy_cached(graphdef, state, tokens, mask, stop_ids, max_new_tokens):
    # Weights enter as arguments (state), never as closed-over constants: 135M constants exhaust memory.
    model = nnx.merge(graphdef, state)
    batch, width = tokens.shape
    cache = model.init_cache(batch, width + max_new_tokens)
    key_mask = jnp.concatenate([mask, jnp.ones((batch, max_new_tokens), jnp.int32)], axis=1)
    logits, cache = model(tokens, attention_mask=key_mask, cache=cache, last_only=True)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = jnp.full((batch, max_new_tokens), _UNWRITTEN, jnp.int32)

    def keep_going(carry):
        i, _, _, _, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def step(carry):
        i, token, cache, out, done = carry
        out = out.at[:, i].set(jnp.where(done, _UNWRITTEN, token))
        done = done | jnp.isin(token, stop_ids)
        logits, cache = model(token[:, None], attention_mask=key_mask, cache=cache)
        return i + 1, jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache, out, done

    carry = (jnp.int32(0), first, cache, out, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(keep_going, step, carry)[3]


@partial(jax.jit, static_argnums=(0, 5))
def _greedy_recompute(graphdef, state, tokens, mask, stop_ids, max_new_tokens):
    # Reference decoder: a fixed-width buffer, the whole prefix recomputed at every step, no cache.
    model = nnx.merge(graphdef, state)
    batch, width = tokens.shape
    buf = jnp.concatenate([tokens, jnp.zeros((batch, max_new_tokens), jnp.int32)], axis=1)
    buf_mask = jnp.concatenate([mask, jnp.zeros((batch, max_new_tokens), jnp.int32)], axis=1)
    out = jnp.full((batch, max_new_tokens), _UNWRITTEN, jnp.int32)

    def step(i, carry):
        buf, buf_mask, out, done = carry
        logits = model(buf, attention_mask=buf_mask)
        token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, width + i - 1, axis=1, keepdims=False), axis=-1)
        token = token.astype(jnp.int32)
        out = out.at[:, i].set(jnp.where(done, _UNWRITTEN, token))
        done = done | jnp.isin(token, stop_ids)
        buf = buf.at[:, width + i].set(token)
        buf_mask = buf_mask.at[:, width + i].set(1)
        return buf, buf_mask, out, done

    carry = (buf, buf_mask, out, jnp.zeros((batch,), bool))
    return jax.lax.fori_loop(0, max_new_tokens, step, carry)[2]
