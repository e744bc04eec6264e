"""JAX kernels that apply one fused stage to one state vector (vmap adds the batch).

Each kernel takes the stage's parameter values ``t[g]`` (affine images of the symbols, one per parametric op
in the stage, in ``stage.all_ops`` order) and a state ``psi[2**n]`` in cirq's big-endian qubit order.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from quantum.fusion import DenseStage, DiagStage, LocalStage, Stage
from quantum.lowering import LoweredOp

Kernel = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def op_matrix(op: LoweredOp, t: jnp.ndarray | None, dtype: jnp.dtype) -> jnp.ndarray:
    """``sum_k exp(i(a_k t + b_k)) Q_k`` (or the fixed unitary when ``t`` is None)."""
    if t is None:
        return jnp.asarray(op.projectors[0], dtype=dtype)
    real = jnp.finfo(dtype).dtype
    angles = jnp.asarray(op.freqs, real) * t + jnp.asarray(op.phases, real)
    return jnp.einsum("k,kij->ij", jnp.exp(1j * angles).astype(dtype), jnp.asarray(op.projectors, dtype))


def _param_slots(ops: Sequence[LoweredOp]) -> list[int | None]:
    """For each op, the index of its parameter in the stage's ``t`` (None for fixed ops)."""
    slots, k = [], 0
    for op in ops:
        slots.append(None if op.param is None else k)
        k += op.param is not None
    return slots


def blocks(n_qubits: int, max_block: int) -> list[list[int]]:
    """Split qubits 0..n-1 into contiguous, nearly equal blocks of at most ``max_block`` qubits."""
    count = -(-n_qubits // max_block)
    sizes = [n_qubits // count + (i < n_qubits % count) for i in range(count)]
    starts = np.cumsum([0] + sizes)
    return [list(range(starts[i], starts[i + 1])) for i in range(count)]


@dataclass(frozen=True)
class StageKernels:
    """Forward, adjoint and (for a local first stage) state-preparation kernels of a stage."""

    apply: Kernel
    adjoint: Kernel
    n_params: int


def _local(stage: LocalStage, n: int, dtype, max_block: int) -> StageKernels:
    ops = stage.all_ops
    slots = dict(zip(map(id, ops), _param_slots(ops), strict=True))
    groups = [g for g in blocks(n, max_block) if set(g) & stage.qubits]
    eye = np.eye(2)

    def qubit_matrix(t, q):
        m = jnp.asarray(eye, dtype)
        for op in stage.ops.get(q, []):
            slot = slots[id(op)]
            m = op_matrix(op, None if slot is None else t[slot], dtype) @ m
        return m

    def block_matrices(t, adjoint):
        out = []
        for g in groups:
            m = qubit_matrix(t, g[0])
            for q in g[1:]:
                m = jnp.kron(m, qubit_matrix(t, q))
            out.append(m.conj().T if adjoint else m)
        return out

    all_blocks = blocks(n, max_block)
    letters = string.ascii_letters
    shape = [2 ** len(g) for g in all_blocks]

    def contract(t, psi, adjoint):
        psi = psi.reshape(shape)
        axes = letters[: len(shape)]
        for g, m in zip(groups, block_matrices(t, adjoint), strict=True):
            j = all_blocks.index(g)
            out_axes = axes[:j] + "Z" + axes[j + 1 :]
            psi = jnp.einsum(f"Z{axes[j]},{axes}->{out_axes}", m, psi)
        return psi.reshape(-1)

    return StageKernels(
        lambda t, psi: contract(t, psi, False), lambda t, psi: contract(t, psi, True), _count_params(ops)
    )


def _count_params(ops: Sequence[LoweredOp]) -> int:
    return sum(op.param is not None for op in ops)


def local_prepare(stage: LocalStage, n: int, dtype) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Apply a local stage to |0...0>: the product state of each qubit matrix's first column."""
    ops = stage.all_ops
    slots = dict(zip(map(id, ops), _param_slots(ops), strict=True))

    def prepare(t):
        psi = jnp.ones((1,), dtype)
        for q in range(n):
            col = jnp.asarray([1.0, 0.0], dtype)
            for op in stage.ops.get(q, []):
                slot = slots[id(op)]
                col = op_matrix(op, None if slot is None else t[slot], dtype) @ col
            psi = (psi[:, None] * col[None, :]).reshape(-1)
        return psi

    return prepare


def _broadcast_to_register(vec: jnp.ndarray, qubits: Sequence[int], n: int) -> jnp.ndarray:
    """A function of the gate's qubits' bits, as a [2]*n tensor (broadcastable) over the register."""
    k = len(qubits)
    order = np.argsort(qubits)
    local = jnp.transpose(vec.reshape((2,) * k), order)  # axes now in increasing qubit order
    shape = [2 if q in qubits else 1 for q in range(n)]
    return local.reshape(shape)


def _diag(stage: DiagStage, n: int, dtype) -> StageKernels:
    real = jnp.finfo(dtype).dtype
    slots = _param_slots(stage.ops)
    tables = []  # per op: (log-phase slope per local basis state, offset) in the gate's own bit order
    for op in stage.ops:
        diag = np.stack([np.real(np.diagonal(q)) for q in op.projectors])  # [K, d], 0/1 indicators
        if op.param is None:
            tables.append((np.zeros(diag.shape[1]), np.angle(np.diagonal(op.projectors[0]))))
        else:
            tables.append((op.freqs @ diag, op.phases @ diag))

    def log_phase(t):
        total = jnp.zeros((2,) * n, real)
        for op, slot, (slope, offset) in zip(stage.ops, slots, tables, strict=True):
            local = jnp.asarray(offset, real)
            if slot is not None:
                local = local + jnp.asarray(slope, real) * t[slot]
            total = total + _broadcast_to_register(local, op.qubits, n)
        return total.reshape(-1)

    def apply(t, psi, sign=1.0):
        return psi * jnp.exp(1j * sign * log_phase(t)).astype(dtype)

    return StageKernels(apply, lambda t, psi: apply(t, psi, -1.0), _count_params(stage.ops))


def _dense(stage: DenseStage, n: int, dtype) -> StageKernels:
    op = stage.op
    k = len(op.qubits)

    def contract(t, psi, adjoint):
        m = op_matrix(op, None if op.param is None else t[0], dtype)
        if adjoint:
            m = m.conj().T
        tensor = psi.reshape((2,) * n)
        out = jnp.tensordot(m.reshape((2,) * (2 * k)), tensor, axes=(list(range(k, 2 * k)), list(op.qubits)))
        return jnp.moveaxis(out, list(range(k)), list(op.qubits)).reshape(-1)

    return StageKernels(
        lambda t, psi: contract(t, psi, False), lambda t, psi: contract(t, psi, True), int(op.param is not None)
    )


def stage_kernels(stage: Stage, n: int, dtype, max_block: int) -> StageKernels:
    """Kernels for one stage of an ``n``-qubit register with amplitudes of ``dtype``."""
    if isinstance(stage, LocalStage):
        return _local(stage, n, dtype, max_block)
    if isinstance(stage, DiagStage):
        return _diag(stage, n, dtype)
    return _dense(stage, n, dtype)

