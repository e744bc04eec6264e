"""Matrix product operators (Gao et al. 2019): a ``d_in × d_out`` matrix stored as a chain of small cores.

With ``d_in = i_1 ⋯ i_K`` and ``d_out = j_1 ⋯ j_K``, core ``k`` has shape ``(D_{k-1}, i_k, j_k, D_k)`` with
``D_0 = D_K = 1`` and the matrix entry is the product of the cores along the chain:
``W[(i_1..i_K), (j_1..j_K)] = Σ_bonds C_1[1, i_1, j_1, :] C_2[:, i_2, j_2, :] ⋯ C_K[:, i_K, j_K, 1]``
(row and column multi-indices in row-major order). The bond dimension ``D`` sets the size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .base import AdapterError, AdapterParam

__all__ = ["MPO", "balanced_factors", "mpo_bond_dims", "mpo_param_count", "mpo_to_dense"]


def balanced_factors(n: int, k: int) -> tuple[int, ...]:
    """Splits ``n`` into ``k`` factors as equal as possible (largest first), e.g. 576 → (9, 8, 8).

    Balanced factors keep every core small: a core's size grows with the product of its own factors.

    Raises:
        AdapterError: ``n`` or ``k`` is not positive.
    """
    if n < 1 or k < 1:
        raise AdapterError(f"cannot factor {n} into {k} factors; both must be positive")

    def splits(m: int, parts: int, cap: int) -> list[tuple[int, ...]]:
        # Non-increasing factor tuples of m with every factor <= cap.
        if parts == 1:
            return [(m,)] if m <= cap else []
        out = []
        for d in range(min(m, cap), 0, -1):
            if m % d == 0 and d**parts >= m:  # d is the largest factor, so d^parts must reach m
                out += [(d, *rest) for rest in splits(m // d, parts - 1, d)]
        return out

    # Smallest largest factor, then the largest smallest one.
    return min(splits(n, k, n), key=lambda f: (f[0], -f[-1]))


def _check_factors(in_factors: Sequence[int], out_factors: Sequence[int]) -> None:
    if len(in_factors) != len(out_factors) or not in_factors:
        raise AdapterError(
            f"MPO factorisations {tuple(in_factors)} and {tuple(out_factors)} need the same, non-zero number of "
            "cores"
        )
    if min(*in_factors, *out_factors) < 1:
        raise AdapterError(f"MPO factors must be positive, got {tuple(in_factors)} and {tuple(out_factors)}")


def mpo_bond_dims(in_factors: Sequence[int], out_factors: Sequence[int], bond_dim: int) -> tuple[int, ...]:
    """``(D_0, …, D_K)``: ``bond_dim`` inside, 1 at both ends, and never more than the rank the matrix can have
    across that cut (a larger bond only adds redundant parameters)."""
    _check_factors(in_factors, out_factors)
    if bond_dim < 1:
        raise AdapterError(f"MPO bond dimension {bond_dim} must be at least 1")
    sizes = [i * j for i, j in zip(in_factors, out_factors, strict=True)]
    dims = [1]
    for k in range(1, len(sizes)):
        dims.append(min(bond_dim, math.prod(sizes[:k]), math.prod(sizes[k:])))
    return (*dims, 1)


def mpo_param_count(in_factors: Sequence[int], out_factors: Sequence[int], bond_dim: int) -> int:
    """Number of entries of all cores."""
    dims = mpo_bond_dims(in_factors, out_factors, bond_dim)
    return sum(dims[k] * i * j * dims[k + 1] for k, (i, j) in enumerate(zip(in_factors, out_factors, strict=True)))


def mpo_to_dense(cores: Sequence[jax.Array]) -> jax.Array:
    """Contracts the cores into the dense ``[d_in, d_out]`` matrix they represent."""
    first = cores[0]
    t = first.reshape(first.shape[1], first.shape[2], first.shape[3])  # (I, J, D) with D_0 = 1 dropped
    for core in cores[1:]:
        rows, cols = t.shape[0] * core.shape[1], t.shape[1] * core.shape[2]
        t = jnp.einsum("abd,dije->aibje", t, core).reshape(rows, cols, core.shape[3])
    return t[:, :, 0]


class MPO(nnx.Module):
    """A trainable MPO-factorised linear map ``x[..., d_in] → x W[..., d_out]`` (no bias).

    The forward pass materialises W from the cores and multiplies once: the adapter's matrices are thin
    (``d_in × r`` with r ≤ 32), so building W costs less than a token's worth of sequential core contractions.

    Args:
        in_factors: ``(i_1, …, i_K)``, product ``d_in``.
        out_factors: ``(j_1, …, j_K)``, product ``d_out``.
        bond_dim: D.
        rngs: ``params`` stream for the initial cores.
        init_std: standard deviation of the entries of the initial dense W (each core gets the K-th root share).
        zero_last: make the last core zero, so W = 0 at initialisation (an adapter that starts as a no-op).
    """

    def __init__(
        self,
        in_factors: Sequence[int],
        out_factors: Sequence[int],
        bond_dim: int,
        *,
        rngs: nnx.Rngs,
        init_std: float,
        zero_last: bool = False,
    ) -> None:
        dims = mpo_bond_dims(in_factors, out_factors, bond_dim)
        self.in_factors = tuple(in_factors)
        self.out_factors = tuple(out_factors)
        n_cores = len(self.in_factors)
        # W's entries are sums over ∏D products of K core entries: split the target variance evenly across cores.
        core_std = (init_std**2 / math.prod(dims)) ** (1.0 / (2 * n_cores))
        cores = []
        for k, (i, j) in enumerate(zip(self.in_factors, self.out_factors, strict=True)):
            shape = (dims[k], i, j, dims[k + 1])
            if zero_last and k == n_cores - 1:
                cores.append(AdapterParam(jnp.zeros(shape, jnp.float32)))
            else:
                cores.append(AdapterParam(core_std * jax.random.normal(rngs.params(), shape, jnp.float32)))
        self.cores = nnx.List(cores)

    @property
    def d_in(self) -> int:
        return math.prod(self.in_factors)

    @property
    def d_out(self) -> int:
        return math.prod(self.out_factors)

    def dense(self) -> jax.Array:
        """The ``[d_in, d_out]`` matrix the cores represent."""
        return mpo_to_dense([core[...] for core in self.cores])

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.dense()
