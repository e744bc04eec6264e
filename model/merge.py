"""Folding input-independent adapters into the base weights: ``W' = W + ΔW`` with ΔW computed once.

LoRA's update is ``x · (s/r) A B`` and weight-mode QTHA's is ``x · (s/r) MPO_A · (c · P(θ)) · MPO_B``: both are a
fixed matrix times the input, so a plain model with ``W + ΔW`` computes the same outputs with no adapter branch.
Activation-mode QTHA feeds every token's activations through a circuit (a non-linear function of the input);
there is no ΔW, and serving keeps the per-token branch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .adapters import AdaptedLinear, AdapterError, LoraAdapter, QthaAdapter, adapted_modules
from .lm import CausalLM

__all__ = ["UnmergeableAdapterError", "adapter_delta", "is_mergeable", "merge_adapters"]


class UnmergeableAdapterError(AdapterError):
    """An adapter whose update depends on the input non-linearly (activation-mode QTHA) has no weight delta."""


def _unmergeable(path: str) -> UnmergeableAdapterError:
    return UnmergeableAdapterError(
        f"{path}: activation-mode QTHA runs its circuit on every token's activations, so its update is not a "
        "fixed weight delta and cannot be folded into the base weights; serve the adapted model unmerged (the "
        "per-token quantum branch), or train a weight-mode QTHA or LoRA adapter to merge or export"
    )


def is_mergeable(model: nnx.Module) -> bool:
    """True when every adapter of ``model`` is input-independent (LoRA, weight-mode QTHA), or it has none."""
    return all(
        not (isinstance(layer.delta, QthaAdapter) and layer.delta.mode != "weight")
        for layer in adapted_modules(model).values()
    )


def adapter_delta(layer: AdaptedLinear, *, where: str = "") -> jax.Array:
    """The float32 ``ΔW [d_in, d_out]`` (``nnx.Linear``'s kernel layout) of one adapted layer.

    Weight mode's circuit probabilities are recomputed from the angles here rather than read from the cached
    :class:`model.adapters.QnnProbs`, so a stale cache cannot leak into a merged model.

    Raises:
        UnmergeableAdapterError: activation-mode QTHA.
        AdapterError: an adapter kind this function does not know.
    """
    delta = layer.delta
    if isinstance(delta, LoraAdapter):
        # Dropout only acts in training; at inference the branch is exactly scaling · A B.
        return delta.scaling * (delta.lora_a[...] @ delta.lora_b[...])
    if isinstance(delta, QthaAdapter):
        if delta.mode != "weight":
            raise _unmergeable(where)
        probs = delta._circuit_probs(delta.theta[...])
        core = delta.core_scale[...] * probs.reshape(delta.rank, delta.rank)
        return delta.scaling * (delta.mpo_a.dense() @ core @ delta.mpo_b.dense())
    raise AdapterError(f"{where}: cannot merge an adapter of type {type(delta).__name__}; merge knows LoRA and QTHA")


def merge_adapters(model: nnx.Module) -> CausalLM:
    """A new plain :class:`CausalLM` whose adapted layers hold ``W + ΔW`` (float32); ``model`` is untouched.

    A model without adapters comes back as an equal copy. The merged logits equal the adapted model's within
    float32 rounding (~1e-5 on the test models).

    Args:
        model: a :class:`CausalLM` with LoRA or weight-mode QTHA adapters injected (e.g. by ``load_adapter``).

    Returns:
        A :class:`CausalLM` of the same config with no adapters.

    Raises:
        UnmergeableAdapterError: an activation-mode QTHA adapter (the message says why and what to do instead).

    Example:
        >>> load_adapter(lm, "versions/7/adapter", base_fingerprint=fp)
        >>> plain = merge_adapters(lm)          # serve or export this
    """
    layers = adapted_modules(model)
    deltas = {path: adapter_delta(layer, where=path) for path, layer in layers.items()}
    abstract = nnx.eval_shape(lambda: CausalLM(model.config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    source = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    flat = []
    for path, var in nnx.to_flat_state(abstract_state):
        module = ".".join(str(p) for p in path[:-1])
        if module in layers:
            value = source[(*path[:-1], "base", path[-1])].get_value()
            if path[-1] == "kernel":
                value = value.astype(jnp.float32) + deltas[module]
        else:
            value = source[path].get_value()
        # A copy, not a view: the merged model must not alias the adapted model's buffers.
        flat.append((path, var.replace(jnp.array(value, dtype=var.get_value().dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
