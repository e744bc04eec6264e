"""What every adapter shares: the variable type that marks trainable adapter weights, the wrapper that adds an
adapter's output to a frozen linear layer, and the adapter errors."""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["AdaptedLinear", "AdapterError", "AdapterParam", "DeltaModule"]


class AdapterError(ValueError):
    """An adapter cannot be built, injected, saved or loaded; the message names the offending value."""


class AdapterParam(nnx.Variable):
    """A trainable adapter weight.

    Deliberately not a subclass of ``nnx.Param``: code that selects the base model's weights with ``nnx.Param``
    never sees adapter weights, and ``nnx.split(model, AdapterParam, ...)`` hands exactly the trainable weights to
    the optimizer while the base stays frozen.
    """


class DeltaModule(Protocol):
    """An adapter branch: maps the layer's input ``x[..., d_in]`` to the additive update ``Δy[..., d_out]``."""

    def __call__(self, x: jax.Array) -> jax.Array: ...


class AdaptedLinear(nnx.Module):
    """``y = base(x) + delta(x)``: a frozen ``nnx.Linear`` with an adapter beside it.

    The adapter runs in float32 whatever the base's dtype (a half-precision update of a small correction loses
    most of it), and its output is cast back to the base's output dtype.

    Args:
        base: the frozen layer (kernel ``[d_in, d_out]``); kept as is, so its weights stay bitwise identical.
        delta: the adapter branch.
        config: the adapter's (frozen, resolved) config, kept so the adapter can be saved without it.
    """

    def __init__(self, base: nnx.Linear, delta: nnx.Module, config: Any) -> None:
        self.base = base
        self.delta = delta
        self.config = config

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        return y + self.delta(x.astype(jnp.float32)).astype(y.dtype)
