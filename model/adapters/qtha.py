"""QTHA, quantum tensor hybrid adaptation (shared design/qtha-method.md): an MPO down-projection, a parametrised
quantum circuit, an MPO up-projection, beside a frozen linear layer.

``qnn_mode = "activation"`` (per token)::

    h = MPO_A(x) ∈ R^n,  q = QNN(h; θ) = ⟨Z_i⟩,  f = α·h + β·q  (or h ⊙ q),  Δy = (s / n) · MPO_B(f)

``qnn_mode = "weight"`` (one circuit per module per step; the circuit takes no token input)::

    P = probabilities of the 2^n basis states of QNN(θ), reshaped r × r with r = 2^(n/2)
    Δy = (s / r) · MPO_B(MPO_A(x) · (c · P))     with c a learnable scale

The last core of MPO_B starts at zero, so a fresh adapter is a no-op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from quantum import CircuitSpec, make_qnn

from .base import AdapterError, AdapterParam
from .lora import lora_param_count
from .mpo import MPO, balanced_factors, mpo_param_count

__all__ = [
    "QnnProbs",
    "QthaAdapter",
    "QthaAdapterConfig",
    "qtha_circuit_spec",
    "qtha_param_count",
    "qtha_rank",
    "has_token_circuits",
    "refresh_qnn_cores",
    "resolve_bond_dim",
]

QnnMode = Literal["activation", "weight"]
Fusion = Literal["linear", "elementwise"]
Entangler = Literal["crz_ring", "cz_ring"]

# Largest bond dimension the automatic choice considers; beyond it an MPO of these sizes is dense anyway.
_MAX_AUTO_BOND = 64


@dataclass(frozen=True)
class QthaAdapterConfig:
    """QTHA hyperparameters. Tags as in qtha-method.md: [paper] stated by the authors, [ours] decided here.

    Attributes:
        n_qubits: qubits of the QNN [paper: 10]. Weight mode needs an even number (P is reshaped r × r).
        n_layers: ansatz layers, 4·n_qubits angles each with CRZ rings [paper: 10].
        qnn_mode: "activation" (per-token circuit) or "weight" (the circuit's probabilities weight the middle
            core) [ours: weight by default, ~1.1× LoRA's step time versus ~7× for activation].
        fusion: "linear" (α·h + β·q, learnable scalars, v2) or "elementwise" (h ⊙ q, v1); activation mode only.
        entangler: entangling pattern of the ansatz (quantum.CircuitSpec) [paper: crz_ring].
        bond_dim: MPO bond dimension D; None chooses the largest D whose adapter has at most ``target_ratio`` of
            the parameters of LoRA r = ``reference_lora_rank`` on the same modules.
        n_cores: cores per MPO.
        in_factors: factorisation of every target's d_in (None: balanced, e.g. 576 → (9, 8, 8)).
        out_factors: factorisation of every target's d_out (None: balanced).
        alpha: s, the update is scaled by s / r as LoRA's alpha / r.
        qnn_init_scale: initial angles ~ U(-scale, scale). None: 0.1 in activation mode (small angles [ours]);
            π in weight mode, because at θ = 0 the state is |0…0⟩, P is one-hot (a rank-1 core) and the
            gradients of all other probabilities vanish [ours].
        target_ratio: parameter budget relative to LoRA for the automatic bond dimension [paper: 24%].
        reference_lora_rank: the LoRA rank that budget refers to [paper: 8].
        targets: module-name patterns that receive an adapter (see ``inject_adapters``).
    """

    kind: ClassVar[str] = "qtha"
    n_qubits: int = 10
    n_layers: int = 10
    qnn_mode: QnnMode = "weight"
    fusion: Fusion = "linear"
    entangler: Entangler = "crz_ring"
    bond_dim: int | None = None
    n_cores: int = 3
    in_factors: tuple[int, ...] | None = None
    out_factors: tuple[int, ...] | None = None
    alpha: float = 16.0
    qnn_init_scale: float | None = None
    target_ratio: float = 0.24
    reference_lora_rank: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.qnn_mode not in ("activation", "weight"):
            raise AdapterError(f"qnn_mode {self.qnn_mode!r} is not 'activation' or 'weight'")
        if self.fusion not in ("linear", "elementwise"):
            raise AdapterError(f"fusion {self.fusion!r} is not 'linear' or 'elementwise'")
        if self.n_qubits < 1 or self.n_layers < 1:
            raise AdapterError(f"n_qubits {self.n_qubits} and n_layers {self.n_layers} must be at least 1")
        if self.qnn_mode == "weight" and self.n_qubits % 2:
            raise AdapterError(
                f"weight mode reshapes the 2^n probabilities into an r × r core, so n_qubits must be even; "
                f"got {self.n_qubits} (use {self.n_qubits + 1})"
            )
        if self.bond_dim is not None and self.bond_dim < 1:
            raise AdapterError(f"bond_dim {self.bond_dim} must be at least 1 (or None for the automatic choice)")
        if self.n_cores < 1:
            raise AdapterError(f"n_cores {self.n_cores} must be at least 1")
        for name in ("in_factors", "out_factors"):
            factors = getattr(self, name)
            if factors is not None and len(factors) != self.n_cores:
                raise AdapterError(f"{name} {factors} must have n_cores = {self.n_cores} entries")
        if not self.targets:
            raise AdapterError("QTHA targets are empty; name at least one module pattern such as 'q_proj'")

    def with_bond_dim(self, bond_dim: int) -> QthaAdapterConfig:
        """This config with an explicit bond dimension (what a saved adapter records)."""
        return dataclasses.replace(self, bond_dim=bond_dim)


def qtha_rank(config: QthaAdapterConfig) -> int:
    """r, the adapter's bottleneck width: n_qubits (activation) or 2^(n_qubits/2) (weight)."""
    return config.n_qubits if config.qnn_mode == "activation" else 2 ** (config.n_qubits // 2)


def qtha_circuit_spec(config: QthaAdapterConfig) -> CircuitSpec:
    """The QNN's circuit: angle-encoded with ⟨Z⟩ readout (activation) or input-free with probabilities (weight)."""
    if config.qnn_mode == "activation":
        return CircuitSpec(
            n_qubits=config.n_qubits, n_layers=config.n_layers, encoding="angle", entangler=config.entangler,
            readout="z",
        )
    return CircuitSpec(
        n_qubits=config.n_qubits, n_layers=config.n_layers, encoding="none", entangler=config.entangler,
        readout="probs",
    )


def _factors(config: QthaAdapterConfig, d_in: int, d_out: int, where: str) -> tuple[tuple[int, ...], ...]:
    """(in_factors, rank_factors, out_factors) of one module, checked against its shape."""
    in_f = config.in_factors or balanced_factors(d_in, config.n_cores)
    out_f = config.out_factors or balanced_factors(d_out, config.n_cores)
    if math.prod(in_f) != d_in:
        raise AdapterError(f"in_factors {in_f} multiply to {math.prod(in_f)}, but {where} has d_in = {d_in}")
    if math.prod(out_f) != d_out:
        raise AdapterError(f"out_factors {out_f} multiply to {math.prod(out_f)}, but {where} has d_out = {d_out}")
    return in_f, balanced_factors(qtha_rank(config), config.n_cores), out_f


def _extra_params(config: QthaAdapterConfig) -> int:
    if config.qnn_mode == "weight":
        return 1  # the scale c of the probability core
    return 2 if config.fusion == "linear" else 0  # α, β


def qtha_param_count(config: QthaAdapterConfig, d_in: int, d_out: int, *, bond_dim: int | None = None) -> int:
    """Trainable parameters of one QTHA adapter on a ``d_in → d_out`` layer.

    Args:
        config: the adapter config.
        d_in: input features.
        d_out: output features.
        bond_dim: overrides ``config.bond_dim`` (required when that is None).
    """
    bond = bond_dim if bond_dim is not None else config.bond_dim
    if bond is None:
        raise AdapterError("qtha_param_count needs a bond dimension; pass bond_dim or use resolve_bond_dim first")
    in_f, rank_f, out_f = _factors(config, d_in, d_out, f"a {d_in}→{d_out} layer")
    circuit = qtha_circuit_spec(config).n_weights
    return mpo_param_count(in_f, rank_f, bond) + circuit + _extra_params(config) + mpo_param_count(rank_f, out_f, bond)


def resolve_bond_dim(config: QthaAdapterConfig, shapes: Mapping[str, tuple[int, int]]) -> int:
    """The bond dimension to use on these modules: ``config.bond_dim``, or else the largest D whose whole adapter
    has at most ``target_ratio`` of LoRA r = ``reference_lora_rank``'s parameters on the same modules (1 if even
    D = 1 exceeds it — the circuit alone can).

    Args:
        config: the adapter config.
        shapes: module path → (d_in, d_out) of every target.
    """
    if config.bond_dim is not None:
        return config.bond_dim
    if not shapes:
        raise AdapterError("no target modules to size the QTHA bond dimension for")
    for path, (d_in, d_out) in shapes.items():
        _factors(config, d_in, d_out, path)  # a factorisation that does not fit fails here, naming the module
    lora = sum(lora_param_count(i, o, config.reference_lora_rank) for i, o in shapes.values())
    best = 1
    for bond in range(1, _MAX_AUTO_BOND + 1):
        total = sum(qtha_param_count(config, i, o, bond_dim=bond) for i, o in shapes.values())
        if total <= config.target_ratio * lora:
            best = bond
    return best


class QnnProbs(nnx.Variable):
    """Weight mode's circuit probabilities P(θ): derived from the angles, neither trained nor saved.

    The circuit takes no token input, so P is computed once per step for all modules together (one batched
    circuit evaluation, see :func:`refresh_qnn_cores`) instead of once per module inside the forward pass: 60
    separate circuits in one program made it compile ~20× longer.
    """


class QthaAdapter(nnx.Module):
    """The QTHA branch of one layer.

    In weight mode the forward pass reads ``P(θ)`` from :class:`QnnProbs`; whoever changes ``θ`` refreshes it
    with :func:`refresh_qnn_cores` (``inject_adapters``, ``train`` and ``load_adapter`` do).

    Args:
        d_in: input features of the adapted layer.
        d_out: output features of the adapted layer.
        config: the adapter config; ``config.bond_dim`` must be resolved (see ``resolve_bond_dim``).
        rngs: ``params`` stream for the cores and angles.
        qnn: the QNN of this config's circuit (``qtha_circuit_spec(config)``); default
            ``quantum.make_qnn(spec)``, the differentiable JAX simulator. Adapters of one model share one QNN
            function (it holds no weights), so it compiles once.
        where: the module's path, for error messages.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: QthaAdapterConfig,
        *,
        rngs: nnx.Rngs,
        qnn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        where: str = "",
    ) -> None:
        if config.bond_dim is None:
            raise AdapterError("QthaAdapter needs a resolved bond_dim; call resolve_bond_dim(config, shapes)")
        in_f, rank_f, out_f = _factors(config, d_in, d_out, where or f"a {d_in}→{d_out} layer")
        self.mode = config.qnn_mode
        self.fusion = config.fusion
        self.rank = qtha_rank(config)
        self.d_out = d_out
        self.spec = qtha_circuit_spec(config)
        self.qnn = make_qnn(self.spec) if qnn is None else qnn
        self.scaling = config.alpha / self.rank
        self.mpo_a = MPO(in_f, rank_f, config.bond_dim, rngs=rngs, init_std=1.0 / math.sqrt(d_in))
        self.mpo_b = MPO(rank_f, out_f, config.bond_dim, rngs=rngs, init_std=1.0 / math.sqrt(self.rank),
                         zero_last=True)
        init_scale = config.qnn_init_scale
        if init_scale is None:
            init_scale = 0.1 if self.mode == "activation" else math.pi
        self.theta = AdapterParam(
            jax.random.uniform(rngs.params(), (self.spec.n_weights,), jnp.float32, -init_scale, init_scale)
        )
        if self.mode == "weight":
            # c · P with c = r gives the core entries a mean of 1/r: an averaging map of unit gain to start from.
            self.core_scale = AdapterParam(jnp.asarray(float(self.rank), jnp.float32))
            self.probs = QnnProbs(self._circuit_probs(self.theta[...]))
        elif self.fusion == "linear":
            self.fuse_alpha = AdapterParam(jnp.ones((), jnp.float32))
            self.fuse_beta = AdapterParam(jnp.ones((), jnp.float32))

    def _circuit_probs(self, theta: jax.Array) -> jax.Array:
        return self.qnn(jnp.zeros((1, self.spec.n_inputs), jnp.float32), theta)[0]

    def middle_core(self) -> jax.Array:
        """Weight mode's ``c · P(θ)`` as an ``[r, r]`` matrix, from the probabilities of the last refresh."""
        return self.core_scale[...] * self.probs[...].reshape(self.rank, self.rank)

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        h = self.mpo_a(x.reshape(-1, x.shape[-1]))
        if self.mode == "weight":
            f = h @ self.middle_core()
        else:
            q = self.qnn(h, self.theta[...])
            f = self.fuse_alpha[...] * h + self.fuse_beta[...] * q if self.fusion == "linear" else h * q
        return (self.scaling * self.mpo_b(f)).reshape(*lead, self.d_out)


def refresh_qnn_cores(model: nnx.Module) -> int:
    """Recomputes weight mode's circuit probabilities from the current angles, all modules in one batched call.

    Differentiable: the training step calls it inside the loss, so gradients reach θ through P.

    Returns:
        How many modules were refreshed.
    """
    groups: dict[int, list[QthaAdapter]] = {}
    for _, node in nnx.iter_graph(model):
        if isinstance(node, QthaAdapter) and node.mode == "weight":
            groups.setdefault(id(node.qnn), []).append(node)  # modules sharing one QNN function batch together
    for adapters in groups.values():
        thetas = jnp.stack([a.theta[...] for a in adapters])
        probs = jax.vmap(adapters[0]._circuit_probs)(thetas)
        for adapter, p in zip(adapters, probs, strict=True):
            adapter.probs[...] = p
    return sum(len(a) for a in groups.values())


def has_token_circuits(model: nnx.Module) -> bool:
    """Whether any module runs a per-token circuit (activation mode): then the model should run its layers as
    one scan (``CausalLM(..., scan_layers=True)``), so the circuit compiles once rather than once per module."""
    return any(isinstance(node, QthaAdapter) and node.mode == "activation" for _, node in nnx.iter_graph(model))
