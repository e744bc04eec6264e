"""The arms of the quality study: LoRA, QTHA in weight and activation mode, and classical stand-ins for its circuit.

Every arm adapts the same modules (``q_proj`` and ``v_proj`` of every layer) unless its ``targets`` say otherwise,
and trains with the same data, steps, batch, seed and schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model import LoraConfig, QthaAdapterConfig
from model.adapters import qtha_circuit_spec, token_mlp_layout, token_mlp_qnn, weight_softmax_factory
from quantum import CircuitSpec

__all__ = ["Arm", "default_arms"]


@dataclass(frozen=True)
class Arm:
    """One adapter configuration under test.

    Attributes:
        name: short key used in the JSON and the plots.
        label: what the report calls it.
        config: the adapter config handed to ``inject_adapters``.
        cheap: runs every seed of the profile when True; only the first ``costly_seeds`` when False.
        classical: replace the circuit by a classical stand-in of the same parameter vector
            (``model.adapters.weight_softmax_factory`` in weight mode, ``token_mlp_qnn`` in activation mode).
        twin: the quantum arm a classical stand-in is paired with (is the circuit doing the work?).
        note: one line for the report (why this arm, what was reduced).
    """

    name: str
    label: str
    config: LoraConfig | QthaAdapterConfig
    cheap: bool = True
    classical: bool = False
    twin: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def unused_weights(self) -> int:
        """Entries of each module's circuit weight vector that this arm never reads (the per-token stand-in's
        spares; counted as trainable by the adapter, but they get no gradient)."""
        if not (self.classical and isinstance(self.config, QthaAdapterConfig)
                and self.config.qnn_mode == "activation"):
            return 0
        layout = token_mlp_layout(qtha_circuit_spec(self.config))
        return layout.n_weights - layout.used

    def qnn_factory(self, seed: int) -> Callable[[CircuitSpec], Any] | None:
        """The QNN builder to inject with (None: the JAX statevector simulator)."""
        if not self.classical:
            return None
        assert isinstance(self.config, QthaAdapterConfig)
        return weight_softmax_factory(seed) if self.config.qnn_mode == "weight" else token_mlp_qnn


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
    # The stand-in's weights start like a tanh MLP's (U(-1, 1), about Glorot's scale for these widths), so it is a
    # nonlinear map of O(1) gain from the first step, as the circuit is (⟨Z_i⟩ ≈ cos(π·tanh h_i) at small angles).
    token_mlp = dataclasses.replace(activation, qnn_init_scale=1.0)
    mlp = token_mlp_layout(qtha_circuit_spec(activation))
    return (
        Arm("lora", "LoRA r=8 α=16", lora, note="the baseline"),
        Arm("qtha_w10", "QTHA weight 10q×10L", paper_weight,
            note="paper's circuit, weight mode; bond dimension chosen for ≈24% of LoRA's parameters"),
        Arm("qtha_w4", "QTHA weight 4q×2L", small_weight,
            note="small weight-mode circuit (the daemon's earlier default size); bond dimension auto (≤24%)"),
        Arm("classical_w10", "classical stand-in for QTHA weight 10q×10L", paper_weight, classical=True, twin="qtha_w10",
            note="ablation: the circuit's P(θ) replaced by softmax(Rθ), same 400 angles, fixed random R"),
        Arm("qtha_act", f"QTHA activation {activation_qubits}q×{activation_layers}L", activation, cheap=False,
            note=(f"per-token circuit; reduced to {activation_qubits} qubits × {activation_layers} layers from the "
                  "paper's 10×10 for CPU cost; same modules")),
        Arm("classical_act", f"per-token classical stand-in for QTHA activation {activation_qubits}q×"
            f"{activation_layers}L", token_mlp, cheap=False, classical=True, twin="qtha_act",
            note=(f"ablation: the per-token circuit replaced by a tanh MLP {mlp.n_in} → {mlp.hidden} → {mlp.n_out} on "
                  f"the same bottleneck features (same π·tanh input map, outputs in [-1, 1] like ⟨Z⟩), its "
                  f"{mlp.used} weights read from the circuit's {mlp.n_weights}-entry angle vector "
                  f"({mlp.n_weights - mlp.used} unused per module); initial weights U(-1, 1); its own learning "
                  "rate")),
    )
