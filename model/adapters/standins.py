"""Classical stand-ins for QTHA's circuit: ablations that keep the adapter around the circuit (MPOs, fusion, scale,
parameter vector) and replace only the quantum map, so a study can ask whether the circuit does the work.

Each is a ``qnn_factory`` for :func:`model.inject_adapters` / :func:`model.finetune`: ``CircuitSpec`` → a function
``(inputs[B, n_inputs], weights[n_weights]) → [B, n_outputs]`` with the circuit's signature. The adapter owns and
trains the ``weights`` vector (the circuit's angles), so the stand-in has exactly the circuit's parameter vector;
:func:`token_mlp_layout` says how many of its entries the per-token stand-in uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from quantum import CircuitSpec

__all__ = ["TokenMlpLayout", "token_mlp_layout", "token_mlp_qnn", "weight_softmax_factory"]

QnnFn = Callable[[jax.Array, jax.Array], jax.Array]


def weight_softmax_factory(seed: int) -> Callable[[CircuitSpec], QnnFn]:
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
        A ``qnn_factory``: spec (``readout="probs"``) → ``f(inputs[B, n_inputs], θ) → [B, 2^n]``.
    """

    def factory(spec: CircuitSpec) -> QnnFn:
        if spec.readout != "probs":
            raise ValueError("the softmax stand-in replaces weight mode's probability readout only")
        n_out, n_w = 2**spec.n_qubits, spec.n_weights
        proj = jax.random.normal(jax.random.key(seed), (n_out, n_w), jnp.float32) / math.sqrt(2 * n_w)

        def core(inputs: jax.Array, weights: jax.Array) -> jax.Array:
            probs = jax.nn.softmax(proj @ weights)
            return jnp.broadcast_to(probs, (inputs.shape[0], n_out))

        return core

    return factory


@dataclass(frozen=True)
class TokenMlpLayout:
    """How the per-token stand-in reads the circuit's weight vector.

    Attributes:
        n_in: inputs per token (the circuit's encoded features, n_qubits).
        hidden: hidden width of the MLP.
        n_out: outputs per token (the circuit's ⟨Z_i⟩, n_qubits).
        n_weights: length of the circuit's weight vector (4·n·L).
        used: entries the MLP reads (``n_in·hidden + hidden + hidden·n_out + n_out``); the rest get no gradient.
    """

    n_in: int
    hidden: int
    n_out: int
    n_weights: int
    used: int


def token_mlp_layout(spec: CircuitSpec) -> TokenMlpLayout:
    """The widest one-hidden-layer MLP (biases on both layers) whose parameters fit in the circuit's weight vector.

    Raises:
        ValueError: the spec is not activation mode's (angle encoding, ⟨Z⟩ readout), or its weight vector is too
            short for even one hidden unit.
    """
    if spec.encoding != "angle" or spec.readout != "z":
        raise ValueError("the per-token stand-in replaces activation mode's circuit (angle encoding, <Z> readout)")
    n_in, n_out, n_w = spec.n_inputs, spec.n_outputs, spec.n_weights
    hidden = (n_w - n_out) // (n_in + 1 + n_out)
    if hidden < 1:
        raise ValueError(f"{n_w} circuit weights are too few for an MLP {n_in} → 1 → {n_out} with biases")
    return TokenMlpLayout(n_in, hidden, n_out, n_w, n_in * hidden + hidden + hidden * n_out + n_out)


def token_mlp_qnn(spec: CircuitSpec) -> QnnFn:
    """A classical per-token stand-in for activation mode's circuit: a small tanh MLP on the bottleneck features.

    Same inputs and outputs as the circuit: each token's raw bottleneck features ``h`` go through the circuit's
    own feature map ``u = π·tanh(h)``, then ``q = tanh(W₂ tanh(W₁ u + b₁) + b₂)`` ∈ [-1, 1]ⁿ, the range of the
    circuit's ⟨Z_i⟩. ``W₁, b₁, W₂, b₂`` are read from the circuit's weight vector (see :func:`token_mlp_layout`;
    4 qubits × 2 layers: 32 angles, an MLP 4 → 3 → 4 uses 31 of them), so the adapter around it — MPOs, fusion
    ``α·h + β·q``, scale, parameter vector — is the activation-mode adapter unchanged. A ``qnn_factory``.

    Args:
        spec: the activation-mode circuit it replaces.

    Returns:
        ``f(inputs[B, n_qubits], weights[4·n·L]) → [B, n_qubits]``, jitted.
    """
    layout = token_mlp_layout(spec)
    n_in, k, n_out = layout.n_in, layout.hidden, layout.n_out
    ends = [n_in * k, n_in * k + k, n_in * k + k + k * n_out, layout.used]

    def mlp(inputs: jax.Array, weights: jax.Array) -> jax.Array:
        w1 = weights[: ends[0]].reshape(n_in, k)
        b1 = weights[ends[0] : ends[1]]
        w2 = weights[ends[1] : ends[2]].reshape(k, n_out)
        b2 = weights[ends[2] : ends[3]]
        u = jnp.pi * jnp.tanh(inputs)
        return jnp.tanh(jnp.tanh(u @ w1 + b1) @ w2 + b2)

    return jax.jit(mlp)
