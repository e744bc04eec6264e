"""The emulated device's shape: a grid of superconducting qubits, its couplers and its native gate set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cirq

NativeGateset = Literal["cz", "sqrt_iswap"]


@dataclass(frozen=True)
class DeviceSpec:
    """A rectangular grid of qubits with nearest-neighbour couplers.

    The default is 6 × 12 = 72 qubits, the size of Origin's Wukong chip. Gate durations feed the thermal-
    relaxation part of the noise model; they are typical transmon figures.

    Attributes:
        name: shown in error messages and calibration snapshots.
        rows: grid rows.
        cols: grid columns.
        gateset: native two-qubit family: ``"cz"`` (PhasedXZ + CZ) or ``"sqrt_iswap"`` (PhasedXZ + √iSWAP).
        single_qubit_gate_s: duration of a PhasedXZ gate.
        two_qubit_gate_s: duration of a CZ or √iSWAP gate.
    """

    name: str = "emulated-wukong-72"
    rows: int = 6
    cols: int = 12
    gateset: NativeGateset = "cz"
    single_qubit_gate_s: float = 25e-9
    two_qubit_gate_s: float = 40e-9

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"a device grid needs rows, cols >= 1, got {self.rows} x {self.cols}")
        if self.gateset not in ("cz", "sqrt_iswap"):
            raise ValueError(f"gateset must be 'cz' or 'sqrt_iswap', got {self.gateset!r}")

    @property
    def n_qubits(self) -> int:
        """Number of qubits on the grid."""
        return self.rows * self.cols

    def qubits(self) -> tuple[cirq.GridQubit, ...]:
        """All qubits, row-major."""
        return tuple(cirq.GridQubit.rect(self.rows, self.cols))

    def couplers(self) -> tuple[tuple[cirq.GridQubit, cirq.GridQubit], ...]:
        """Every nearest-neighbour pair, each once and ordered ``(smaller, larger)``."""
        pairs = []
        for q in self.qubits():
            for nb in (q + (0, 1), q + (1, 0)):
                if nb.row < self.rows and nb.col < self.cols:
                    pairs.append((q, nb))
        return tuple(pairs)

    def target_gateset(self) -> cirq.CompilationTargetGateset:
        """The cirq compilation target of the native gate set."""
        if self.gateset == "cz":
            return cirq.CZTargetGateset()
        return cirq.SqrtIswapTargetGateset()

    def native_gate_names(self) -> str:
        """A human-readable list of the native gates, for error messages."""
        two = "CZ" if self.gateset == "cz" else "ISWAP**±0.5"
        return f"PhasedXZ, {two}, measurement"


def coupler_key(a: cirq.Qid, b: cirq.Qid) -> tuple[cirq.Qid, cirq.Qid]:
    """A coupler's canonical (sorted) key, so ``(a, b)`` and ``(b, a)`` name the same coupler."""
    return (a, b) if a < b else (b, a)
