"""Readout-error mitigation from a calibration's per-qubit confusion matrices.

The read distribution is ``p_read = (M_0 ⊗ … ⊗ M_{n-1}) p_true``. The least-squares solution of that system is
the tensor product of the per-qubit inverses applied to ``p_read`` (exact and cheap: n 2×2 solves instead of a
2^n × 2^n one); shot noise can push it outside the probability simplex, so it is then projected onto the
simplex (the closest distribution in Euclidean norm).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bits_to_probabilities(bits: np.ndarray) -> np.ndarray:
    """The empirical distribution ``[2**n]`` of ``[repetitions, n]`` bits (column 0 is the most significant)."""
    bits = np.asarray(bits, dtype=np.int64)
    n = bits.shape[1]
    indices = bits @ (1 << np.arange(n - 1, -1, -1))
    return np.bincount(indices, minlength=2**n) / len(bits)


def project_to_simplex(vector: np.ndarray) -> np.ndarray:
    """The probability vector nearest to ``vector`` in Euclidean norm (Duchi et al. 2008)."""
    v = np.asarray(vector, dtype=float)
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    ks = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - cumulative / ks > 0)[0][-1]
    theta = cumulative[rho] / (rho + 1)
    return np.maximum(v - theta, 0.0)


def apply_per_qubit(matrices: Sequence[np.ndarray], probabilities: np.ndarray) -> np.ndarray:
    """``(M_0 ⊗ … ⊗ M_{n-1}) p`` without forming the 2^n × 2^n matrix (qubit 0 the most significant bit)."""
    n = len(matrices)
    tensor = np.asarray(probabilities, dtype=float).reshape((2,) * n)
    for axis, matrix in enumerate(matrices):
        tensor = np.moveaxis(np.tensordot(matrix, tensor, axes=([1], [axis])), 0, axis)
    return tensor.reshape(-1)


def mitigate_probabilities(probabilities: np.ndarray, confusions: Sequence[np.ndarray]) -> np.ndarray:
    """Undo tensor-product readout error on a distribution.

    Args:
        probabilities: read distribution ``[2**n]``, qubit 0 the most significant bit.
        confusions: per qubit, ``M[read, true]`` (e.g. ``Calibration.confusion_matrices(qubits)``).

    Returns:
        The least-squares estimate of the true distribution, projected onto the probability simplex.

    Raises:
        ValueError: sizes disagree or a confusion matrix is singular (readout no better than a coin).
    """
    if len(probabilities) != 2 ** len(confusions):
        raise ValueError(f"{len(probabilities)} probabilities for {len(confusions)} qubits (need 2**n)")
    inverses = []
    for i, m in enumerate(confusions):
        if abs(np.linalg.det(m)) < 1e-9:
            raise ValueError(
                f"confusion matrix of qubit {i} is singular ({m.tolist()}): recalibrate its readout"
            )
        inverses.append(np.linalg.inv(m))
    return project_to_simplex(apply_per_qubit(inverses, probabilities))


def z_expectations(probabilities: np.ndarray) -> np.ndarray:
    """Per-qubit ⟨Z_i⟩ of a distribution over n bits (qubit 0 the most significant)."""
    n = int(np.log2(len(probabilities)))
    tensor = np.asarray(probabilities).reshape((2,) * n)
    out = []
    for axis in range(n):
        marginal = tensor.sum(axis=tuple(a for a in range(n) if a != axis))
        out.append(marginal[0] - marginal[1])
    return np.array(out)


def mitigated_z(bits: np.ndarray, confusions: Sequence[np.ndarray]) -> np.ndarray:
    """Per-qubit ⟨Z_i⟩ from measured bits, readout error removed.

    Example:
        >>> m = np.array([[0.9, 0.2], [0.1, 0.8]])  # p01 = 0.1, p10 = 0.2
        >>> bits = np.array([[0]] * 90 + [[1]] * 10)  # what a |0⟩ qubit reads
        >>> float(mitigated_z(bits, [m])[0])
        1.0
    """
    return z_expectations(mitigate_probabilities(bits_to_probabilities(bits), confusions))
