"""The JAX statevector simulator as a backend (the training default)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import numpy as np

from quantum.backends.base import as_rows
from quantum.circuits import QnnCircuit
from quantum.statevector import QnnFunction, SimulatorOptions, compile_circuit


@dataclass(frozen=True)
class JaxBackend:
    """Exact, differentiable simulation in JAX (adjoint-method gradients).

    Attributes:
        options: simulator options (precision, Kronecker block size, memory limit).
    """

    options: SimulatorOptions = field(default_factory=SimulatorOptions)
    name: str = "jax"

    def compile(self, qc: QnnCircuit) -> QnnFunction:
        """``f(inputs[B, k], weights[P]) -> [B, m]``, pure and differentiable (not yet jitted)."""
        return compile_circuit(qc, self.options)

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """Evaluate rows of symbol values (every symbol treated as a per-row input)."""
        values = as_rows(values, qc)
        rows = replace(qc, input_symbols=qc.symbols, weight_symbols=())
        f = jax.jit(compile_circuit(rows, self.options))
        return np.asarray(f(values, np.zeros(0)), dtype=np.float64)
