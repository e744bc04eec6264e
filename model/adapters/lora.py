"""LoRA (Hu et al. 2021): ``Δy = (alpha / r) · B A x`` with ``B = 0`` at initialisation, the baseline QTHA must
beat."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from .base import AdapterError, AdapterParam

__all__ = ["LoraAdapter", "LoraConfig", "lora_param_count"]


@dataclass(frozen=True)
class LoraConfig:
    """LoRA hyperparameters.

    Attributes:
        rank: r, the rank of the update.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout rate on the adapter's input while training (0 disables it).
        targets: module-name patterns that receive an adapter (see ``inject_adapters``).
    """

    kind: ClassVar[str] = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise AdapterError(f"LoRA rank {self.rank} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout {self.dropout} must be in [0, 1)")
        if not self.targets:
            raise AdapterError("LoRA targets are empty; name at least one module pattern such as 'q_proj'")


def lora_param_count(d_in: int, d_out: int, rank: int) -> int:
    """Trainable parameters of one LoRA adapter on a ``d_in → d_out`` layer: ``r · (d_in + d_out)``."""
    return rank * (d_in + d_out)


class LoraAdapter(nnx.Module):
    """The LoRA branch of one layer.

    Args:
        d_in: input features of the adapted layer.
        d_out: output features of the adapted layer.
        config: rank, alpha, dropout.
        rngs: ``params`` initialises A; ``dropout`` drives the dropout masks when ``dropout > 0``.
    """

    def __init__(self, d_in: int, d_out: int, config: LoraConfig, *, rngs: nnx.Rngs) -> None:
        # A as PyTorch's LoRA: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in)).
        bound = 1.0 / math.sqrt(d_in)
        self.lora_a = AdapterParam(
            jax.random.uniform(rngs.params(), (d_in, config.rank), jnp.float32, -bound, bound)
        )
        self.lora_b = AdapterParam(jnp.zeros((config.rank, d_out), jnp.float32))
        self.scaling = config.alpha / config.rank
        # Inference by default; the trainer switches dropout on with ``model.train()`` and back off afterwards.
        self.dropout = nnx.Dropout(config.dropout, deterministic=True, rngs=rngs) if config.dropout > 0 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.scaling * ((x @ self.lora_a[...]) @ self.lora_b[...])
