"""The arms of the quality study: LoRA, QTHA in weight and activation mode, and a classical ablation of QTHA.

Every arm adapts the same modules (``q_proj`` and ``v_proj`` of every layer) unless its ``targets`` say otherwise,
and trains with the same data, steps, batch, seed and schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from model import LoraConfig, QthaAdapterConfig
from quantum import CircuitSpec

__all__ = ["Arm", "classical_core_factory", "default_arms"]


@dataclass(frozen=True)
class Arm:
    """One adapter configuration under test.

    Attributes:
        name: short key used in the JSON and the plots.
        label: what the report calls it.
        config: the adapter config handed to ``inject_adapters``.
        cheap: runs every seed of the profile when True; only the first ``costly_seeds`` when False.
        classical: replace the circuit by :func:`classical_core_factory` (weight mode only).
        note: one line for the report (why this arm, what was reduced).
    """

    name: str
    label: str
    config: LoraConfig | QthaAdapterConfig
    cheap: bool = True
    classical: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def qnn_factory(self, seed: int) -> Callable[[CircuitSpec], Any] | None:
        """The QNN builder to inject with (None: the JAX statevector simulator)."""
        return classical_core_factory(seed) if self.classical else None


def classical_core_factory(seed: int) -> Callable[[CircuitSpec], Callable[[jax.Array, jax.Array], jax.Array]]:
    """A classical stand-in for weight mode's circuit, with exactly the circuit's trainable parameters.

    The circuit maps its ``4·n·L`` angles θ to a probability vector ``P(θ)`` over ``2^n`` basis states; the
    stand-in maps the same θ to ``softmax(R θ)`` with ``R`` a fixed Gaussian ``[2^n, 4·n·L]`` matrix (seeded, not
    trained). Same parameter count, same output type and the same surrounding adapter (MPOs, scale, init): only
    the quantum map is replaced. ``R``'s scale, ``1/sqrt(2·4nL)``, gives the logits at the circuit's uniform
    ``θ ~ U(-π, π)`` initialisation a standard deviation of π/√6 ≈ 1.28, that of log-probabilities of a random
    circuit's Porter–Thomas output, so both start from a similarly spread core.

    Args:
        seed: seeds ``R``.

    Returns:
        A ``qnn_factory`` for ``inject_adapters``: spec → ``f(inputs[B, n_inputs], θ) → [B, 2^n]``.
    """

    def factory(spec: CircuitSpec) -> Callable[[jax.Array, jax.Array], jax.Array]:
        if spec.readout != "probs":
            raise ValueError("the classical stand-in replaces weight mode's probability readout only")
        n_out, n_w = 2**spec.n_qubits, spec.n_weights
        proj = jax.random.normal(jax.random.key(seed), (n_out, n_w), jnp.float32) / math.sqrt(2 * n_w)

        def core(inputs: jax.Array, weights: jax.Array) -> jax.Array:
            probs = jax.nn.softmax(proj @ weights)
            return jnp.broadcast_to(probs, (inputs.shape[0], n_out))

        return core

    return factory


def default_arms(*, activation_qubits: int, activation_layers: int) -> tuple[Arm, ...]:
    """The study's arms.

    Args:
        activation_qubits: circuit width of the activation-mode arm (reduced from the paper's 10 for CPU cost).
        activation_layers: its depth (reduced from the paper's 10).
    """
    lora = LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
    paper_weight = QthaAdapterConfig(n_qubits=10, n_layers=10, qnn_mode="weight")
    small_weight = QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode="weight")
    activation = QthaAdapterConfig(n_qubits=activation_qubits, n_layers=activation_layers, qnn_mode="activation")
    return (
        Arm("lora", "LoRA r=8 α=16", lora, note="the baseline"),
        Arm("qtha_w10", "QTHA weight 10q×10L", paper_weight,
            note="paper's circuit, weight mode; bond dimension chosen for ≈24% of LoRA's parameters"),
        Arm("qtha_w4", "QTHA weight 4q×2L", small_weight,
            note="small weight-mode circuit (the daemon's earlier default size); bond dimension auto (≤24%)"),
        Arm("classical_w10", "classical stand-in for QTHA weight 10q×10L", paper_weight, classical=True,
            note="ablation: the circuit's P(θ) replaced by softmax(Rθ), same 400 angles, fixed random R"),
        Arm("qtha_act", f"QTHA activation {activation_qubits}q×{activation_layers}L", activation, cheap=False,
            note=(f"per-token circuit; reduced to {activation_qubits} qubits × {activation_layers} layers from the "
                  "paper's 10×10 for CPU cost; same modules")),
    )
