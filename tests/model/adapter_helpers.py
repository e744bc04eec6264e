"""Shared helpers of the adapter, training, evaluation and artifact tests: a tiny random Llama-family model and a
learnable token task."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import CausalLM, LMConfig
from model.adapters import AdapterParam, refresh_qnn_cores
from model.train import Batch
from quantum import make_qnn

TINY = LMConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8,
)


def tiny_lm(seed: int = 0, *, layers: int = 2) -> CausalLM:
    """A fresh random tiny model (q_proj 32→32, v_proj 32→16 in each layer); one layer compiles twice as fast."""
    return CausalLM(dataclasses.replace(TINY, num_hidden_layers=layers), rngs=nnx.Rngs(seed))


def counting_batches(n: int, *, seed: int, batch: int = 8, length: int = 16) -> list[Batch]:
    """Sequences ``a, a+1, a+2, … (mod 64)``: a task a random model does not know and adapters learn quickly."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        seq = (rng.integers(0, TINY.vocab_size, size=(batch, 1)) + np.arange(length + 1)) % TINY.vocab_size
        out.append(Batch(
            inputs=jnp.asarray(seq[:, :-1], jnp.int32),
            targets=jnp.asarray(seq[:, 1:], jnp.int32),
            loss_mask=jnp.ones((batch, length), jnp.float32),
            attention_mask=jnp.ones((batch, length), jnp.int32),
        ))
    return out


def tokens(batch: int = 2, length: int = 7, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).integers(0, TINY.vocab_size, size=(batch, length)), jnp.int32)


def randomise_adapters(model: nnx.Module, *, seed: int = 1, scale: float = 0.3) -> None:
    """Adds seeded noise to every adapter weight, so the adapters do something measurable (fresh ones are no-ops),
    and refreshes weight-mode QTHA's circuit probabilities from the new angles."""
    leaves, treedef = jax.tree.flatten(nnx.state(model, AdapterParam))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]))
    refresh_qnn_cores(model)


# One compiled QNN per circuit spec for the whole test session: each make_qnn call is a new jitted function that
# compiles anew, and the tests inject the same few specs many times.
shared_qnn = functools.cache(make_qnn)
