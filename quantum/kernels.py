"""JAX kernels that apply one fused stage to a batch of state vectors.

Each kernel takes the stage's parameter values ``t`` (one per parametric op, in ``stage.all_ops`` order), either
shared ``[g]`` or per example ``[B, g]``, and states ``psi[B, 2, 2**n]``: the real and imaginary planes of the
amplitudes, in cirq's big-endian qubit order. Split planes let real gates (RY, CNOT, SWAP, H...) run as real
matrix products on both planes at once, a quarter of the multiply-adds of a complex product, and let a complex
gate run as four real products: XLA:CPU's real GEMMs are several times faster than its complex ones. Gate
matrices of a stage are built in one vectorised step (complex, they are tiny), so the traced program stays small
(fast compiles) and shared matrices are built once per call rather than per example.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from jax import lax

from quantum.fusion import DenseStage, DiagStage, LocalStage, Stage
from quantum.lowering import LoweredOp
from quantum.native import KIND_COMPLEX, KIND_PHASE, KIND_REAL, FactorLayout

Kernel = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
# Diagonal stages use a dense [2**n, g] phase table up to this many entries, a broadcast sum beyond.
_PHASE_TABLE_ENTRIES = 2**22
# einsum letters: register axes, "y" for the batch, "z" for the real/imaginary plane, upper case for a gate's
# output axes.
_AXES = "abcdefghijklmnopqrstuvwx"


@dataclass(frozen=True)
class StageKernels:
    """A stage as a product of factors (Kronecker blocks, a phase, a dense gate) applied in order.

    ``mats(t)`` builds every factor's matrix from the stage's parameters (a phase factor's "matrix" is its
    cos/sin table); ``factor(i, m, psi, adjoint)`` applies factor ``i`` (or its adjoint) with matrix ``m``. The
    adjoint backward pass walks the factors one by one: it uncomputes the state before a factor and takes the
    factor's matrix gradient from that state and the adjoint state after it, without re-running the stage.
    ``layouts`` says where each factor acts, for the native kernels; None where they cannot run it (a dense gate).
    """

    mats: Callable[[jnp.ndarray], tuple]
    factor: Callable[[int, jnp.ndarray, jnp.ndarray, bool], jnp.ndarray]
    n_factors: int
    n_params: int
    layouts: tuple[FactorLayout, ...] | None = None

    def apply(self, t: jnp.ndarray, psi: jnp.ndarray) -> jnp.ndarray:
        """The stage applied to ``psi``."""
        ms = self.mats(t)
        for i in range(self.n_factors):
            psi = self.factor(i, ms[i], psi, False)
        return psi

    def adjoint(self, t: jnp.ndarray, psi: jnp.ndarray) -> jnp.ndarray:
        """The stage's inverse applied to ``psi``."""
        ms = self.mats(t)
        for i in reversed(range(self.n_factors)):
            psi = self.factor(i, ms[i], psi, True)
        return psi



class _MatrixBank:
    """All matrices of a list of same-size ops, built from ``t`` at once: ``[..., n_ops, d, d]``."""

    def __init__(self, ops: Sequence[LoweredOp], dtype) -> None:
        self.dtype = dtype
        self.real = jnp.finfo(dtype).dtype
        d = ops[0].projectors.shape[-1]
        k = max(len(op.freqs) for op in ops)
        self.freqs = np.zeros((len(ops), k))
        self.phases = np.zeros((len(ops), k))
        self.projectors = np.zeros((len(ops), k, d, d), np.complex128)
        n_params = sum(op.param is not None for op in ops)
        self.select = np.zeros((n_params, len(ops)))  # t[..., g] @ select -> per-op parameter
        slot = 0
        for i, op in enumerate(ops):
            kk = len(op.freqs)
            self.freqs[i, :kk], self.phases[i, :kk], self.projectors[i, :kk] = op.freqs, op.phases, op.projectors
            if op.param is not None:
                self.select[slot, i] = 1.0
                slot += 1

    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        per_op = t @ jnp.asarray(self.select, t.dtype)  # fixed ops read 0 (and their freqs are 0)
        angles = per_op[..., None] * jnp.asarray(self.freqs, self.real) + jnp.asarray(self.phases, self.real)
        return jnp.einsum("...ok,okij->...oij", lax.complex(jnp.cos(angles), jnp.sin(angles)).astype(self.dtype), jnp.asarray(self.projectors, self.dtype))


def _count_params(ops: Sequence[LoweredOp]) -> int:
    return sum(op.param is not None for op in ops)


def blocks(n_qubits: int, max_block: int) -> list[list[int]]:
    """Split qubits 0..n-1 into contiguous, nearly equal blocks of at most ``max_block`` qubits."""
    count = -(-n_qubits // max_block)
    sizes = [n_qubits // count + (i < n_qubits % count) for i in range(count)]
    starts = np.cumsum([0] + sizes)
    return [list(range(starts[i], starts[i + 1])) for i in range(count)]


class _QubitMatrices:
    """Per-qubit products of a local stage's gates: ``[..., n, 2, 2]`` (identity on untouched qubits)."""

    def __init__(self, stage: LocalStage, n: int, dtype) -> None:
        ops = stage.all_ops
        self.bank = _MatrixBank(ops, dtype) if ops else None
        position = {id(op): i for i, op in enumerate(ops)}
        depth = max((len(v) for v in stage.ops.values()), default=0)
        # index[j, q]: the j-th gate on qubit q, or len(ops) for the identity padding
        self.index = np.full((depth, n), len(ops), np.int64)
        for q, q_ops in stage.ops.items():
            for j, op in enumerate(q_ops):
                self.index[j, q] = position[id(op)]
        self.dtype = dtype

    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        mats = self.bank(t)
        eye = jnp.broadcast_to(jnp.eye(2, dtype=self.dtype), mats.shape[:-3] + (1, 2, 2))
        mats = jnp.concatenate([mats, eye], axis=-3)
        # Select with a one-hot contraction, not a gather: gathers under vmap hit an XLA shape bug here.
        pick = jnp.asarray(np.eye(mats.shape[-3])[self.index], self.dtype)  # [depth, n, n_ops + 1]
        out = jnp.einsum("qo,...okl->...qkl", pick[0], mats)
        for j in range(1, len(self.index)):
            out = jnp.einsum("qo,...okl->...qkl", pick[j], mats) @ out
        return out


def _kron(mats: jnp.ndarray) -> jnp.ndarray:
    """Kronecker product over axis -3 of ``[..., m, a, b]`` (first factor most significant)."""
    out = mats[..., 0, :, :]
    for i in range(1, mats.shape[-3]):
        m = mats[..., i, :, :]
        out = (out[..., :, None, :, None] * m[..., None, :, None, :]).reshape(
            out.shape[:-2] + (out.shape[-2] * m.shape[-2], out.shape[-1] * m.shape[-1])
        )
    return out


def _is_real(op: LoweredOp) -> bool:
    """The gate's matrix is real for every parameter value (RY, X, H, CNOT, SWAP...; not RX, RZ, S).

    Its imaginary part is a trigonometric polynomial in t with ``len(op.freqs)`` frequencies; vanishing at more
    than twice as many generic points, it vanishes everywhere.
    """
    points = np.random.default_rng(0).uniform(-4.0, 4.0, 2 * len(op.freqs) + 3)
    return all(np.abs(op.unitary(t).imag).max() < 1e-12 for t in points)


def _contract(m: jnp.ndarray, psi: jnp.ndarray, spec: str, real: bool) -> jnp.ndarray:
    """Apply the (complex) matrix ``m`` to split planes ``psi[B, 2, ...]`` by ``einsum(spec, ., psi)``.

    A real matrix is one real product over both planes; a complex one is two, recombined as
    ``(Mr + i Mi)(re + i im) = (Mr re - Mi im) + i (Mr im + Mi re)``.
    """
    if real:
        return jnp.einsum(spec, m.real, psi)
    r, i = jnp.einsum(spec, m.real, psi), jnp.einsum(spec, m.imag, psi)
    return jnp.stack([r[:, 0] - i[:, 1], r[:, 1] + i[:, 0]], axis=1)


def _local(stage: LocalStage, n: int, dtype, max_block: int) -> StageKernels:
    qubit_mats = _QubitMatrices(stage, n, dtype)
    all_blocks = blocks(n, max_block)
    active = [j for j, g in enumerate(all_blocks) if set(g) & stage.qubits]
    shape = [2 ** len(g) for g in all_blocks]
    axes = _AXES[: len(shape)]
    real = all(_is_real(op) for op in stage.all_ops)

    def mats(t):
        per_qubit = qubit_mats(t)
        return tuple(_kron(per_qubit[..., all_blocks[j], :, :]) for j in active)

    def factor(i, m, psi, adjoint):
        j = active[i]
        if adjoint:
            m = jnp.swapaxes(m, -1, -2).conj()
        batch = "y" if m.ndim == 3 else ""
        out = axes[:j] + "Z" + axes[j + 1 :]
        psi = _contract(m, psi.reshape((psi.shape[0], 2, *shape)), f"{batch}Z{axes[j]},yz{axes}->yz{out}", real)
        return psi.reshape(psi.shape[0], 2, -1)

    kind = KIND_REAL if real else KIND_COMPLEX
    sizes = [len(g) for g in all_blocks]
    layouts = tuple(
        FactorLayout(kind, 2 ** sum(sizes[:j]), 2 ** sizes[j], 2 ** sum(sizes[j + 1 :])) for j in active
    )
    return StageKernels(mats, factor, len(active), _count_params(stage.all_ops), layouts)


def local_prepare(stage: LocalStage, n: int, dtype) -> Callable[[jnp.ndarray, int], jnp.ndarray]:
    """Apply a local stage to |0...0>: the product of each qubit matrix's first column, ``[B, 2, 2**n]``."""
    qubit_mats = _QubitMatrices(stage, n, dtype)

    def prepare(t, batch):
        cols = qubit_mats(t)[..., :, 0]  # [..., n, 2]
        psi = cols[..., 0, :]
        for q in range(1, n):
            psi = (psi[..., :, None] * cols[..., q, None, :]).reshape(psi.shape[:-1] + (-1,))
        psi = jnp.broadcast_to(psi, (batch, 2**n))
        return jnp.stack([psi.real, psi.imag], axis=1)

    return prepare


def _phase_tables(stage: DiagStage, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per op: log-phase slope and offset over the gate's local basis (log-phase = slope * t + offset)."""
    tables = []
    for op in stage.ops:
        diag = np.stack([np.real(np.diagonal(q)) for q in op.projectors])  # [K, d], 0/1 indicators
        if op.param is None:
            tables.append((np.zeros(diag.shape[1]), np.angle(np.diagonal(op.projectors[0]))))
        else:
            tables.append((op.freqs @ diag, op.phases @ diag))
    return tables


def _expand(local: np.ndarray, qubits: Sequence[int], n: int) -> np.ndarray:
    """A function of some qubits' bits, as a vector over the whole register's 2**n basis states."""
    bits = (np.arange(2**n)[:, None] >> (n - 1 - np.asarray(qubits))[None, :]) & 1
    index = bits @ (1 << np.arange(len(qubits))[::-1])
    return local[..., index]


def _diag(stage: DiagStage, n: int, dtype) -> StageKernels:
    real = jnp.finfo(dtype).dtype
    tables = _phase_tables(stage, n)
    param_ops = [i for i, op in enumerate(stage.ops) if op.param is not None]
    offset = sum(_expand(off, op.qubits, n) for op, (_, off) in zip(stage.ops, tables, strict=True))
    if 2**n * max(len(param_ops), 1) <= _PHASE_TABLE_ENTRIES:
        slope = np.stack([_expand(tables[i][0], stage.ops[i].qubits, n) for i in param_ops], axis=1) if param_ops else None

        def log_phase(t):
            base = jnp.asarray(offset, real)
            return base if slope is None else t @ jnp.asarray(slope.T, real) + base

    else:

        def log_phase(t):
            total = jnp.asarray(offset, real).reshape((2,) * n)
            for slot, i in enumerate(param_ops):
                op = stage.ops[i]
                local = jnp.asarray(tables[i][0], real) * t[..., slot, None]
                total = total + _broadcast(local, op.qubits, n)
            return total.reshape(t.shape[:-1] + (2**n,))

    def mats(t):
        phi = log_phase(t)
        return (jnp.stack([jnp.cos(phi), jnp.sin(phi)]),)

    def factor(_, m, psi, adjoint):
        c, s = m[0], -m[1] if adjoint else m[1]
        re, im = psi[:, 0], psi[:, 1]
        return jnp.stack([re * c - im * s, re * s + im * c], axis=1)

    return StageKernels(mats, factor, 1, len(param_ops), (FactorLayout(KIND_PHASE, 1, 2**n, 1),))


def _broadcast(local: jnp.ndarray, qubits: Sequence[int], n: int) -> jnp.ndarray:
    """``local[..., 2**k]`` over the gate's bits as a ``[..., 2, 1, 2, ...]`` tensor over the register."""
    k = len(qubits)
    lead = local.shape[:-1]
    order = np.argsort(qubits)
    tensor = jnp.transpose(local.reshape(lead + (2,) * k), list(range(len(lead))) + [len(lead) + o for o in order])
    return tensor.reshape(lead + tuple(2 if q in qubits else 1 for q in range(n)))


def _dense(stage: DenseStage, n: int, dtype) -> StageKernels:
    op = stage.op
    k = len(op.qubits)
    bank = _MatrixBank([op], dtype)
    real = _is_real(op)

    def mats(t):
        return (bank(t)[..., 0, :, :],)

    def factor(_, m, psi, adjoint):
        if adjoint:
            m = jnp.swapaxes(m, -1, -2).conj()
        tensor = psi.reshape((psi.shape[0], 2) + (2,) * n)
        letters = _AXES[:n]
        gate_in = "".join(letters[q] for q in op.qubits)
        gate_out = string.ascii_uppercase[:k]
        out = "".join(gate_out[op.qubits.index(q)] if q in op.qubits else letters[q] for q in range(n))
        batch = "y" if m.ndim == 3 else ""
        spec = f"{batch}{gate_out}{gate_in},yz{letters}->yz{out}"
        return _contract(m.reshape(m.shape[:-2] + (2,) * (2 * k)), tensor, spec, real).reshape(psi.shape)

    return StageKernels(mats, factor, 1, int(op.param is not None))


def stage_kernels(stage: Stage, n: int, dtype, max_block: int) -> StageKernels:
    """Kernels for one stage of an ``n``-qubit register with amplitudes of ``dtype``."""
    if isinstance(stage, LocalStage):
        return _local(stage, n, dtype, max_block)
    if isinstance(stage, DiagStage):
        return _diag(stage, n, dtype)
    return _dense(stage, n, dtype)
