"""The backend protocol: what every circuit-execution backend provides."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from quantum.circuits import QnnCircuit
from quantum.statevector import QnnFunction


@runtime_checkable
class Backend(Protocol):
    """Evaluates a ``QnnCircuit`` for many symbol bindings at once (numpy in, numpy out; not differentiable).

    ``values[N, len(qc.symbols)]`` binds ``qc.symbols`` (inputs then weights) per row; the result is
    ``float64[N, qc.n_outputs]``: ``<Z_i>`` or basis probabilities, exact or estimated from shots.
    """

    name: str

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class DifferentiableBackend(Backend, Protocol):
    """A backend that also compiles a circuit into a pure, differentiable JAX function."""

    def compile(self, qc: QnnCircuit) -> QnnFunction: ...


def as_rows(values: np.ndarray, qc: QnnCircuit) -> np.ndarray:
    """Validate ``values`` as ``float64[N, len(qc.symbols)]``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(qc.symbols):
        raise ValueError(f"values of shape {values.shape}: expected [N, {len(qc.symbols)}] (inputs then weights)")
    return values
