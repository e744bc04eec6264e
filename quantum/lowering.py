"""Lower a symbolic cirq circuit to ops in spectral form, ready to compile or to shift.

Every operation becomes ``U(t) = sum_k exp(i*(a_k*t + b_k)) Q_k`` on its qubits, with one real parameter ``t``
that is an affine function of the circuit's symbols (``t = c0 + sum_j c_j s_j``). Fixed gates have one term with
``a = b = 0`` and ``Q = U``. For cirq's ``EigenGate`` family (RX, RY, RZ, X/Y/Z/H powers, CZ, CNOT, SWAP, ISWAP
powers...) ``t`` is the gate's exponent and the ``Q_k`` are its eigenprojectors, so the frequencies ``|a_k-a_l|``
also give the parameter-shift rule. Controlled gates add an ``a = 0`` term on the control-off subspace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cirq
import numpy as np
import sympy

from quantum.errors import NonlinearParameterError, UnresolvedSymbolError, UnsupportedGateError

SUPPORTED_GATES = (
    "any gate with a fixed unitary (cirq.unitary: H, X, Y, Z, S, T, CZ, CNOT, SWAP, ISWAP, MatrixGate, ...); "
    "symbolic EigenGates (RX, RY, RZ, XPow, YPow, ZPow, HPow, CZPow, CXPow, SwapPow, ISwapPow, ...) and "
    "ControlledGate of them (CRZ, CRX, ...); symbolic gates that cirq decomposes into those (PhasedXZ, PhasedXPow)"
)


@dataclass(frozen=True)
class Affine:
    """``t = const + sum(coef * symbol_values[index])``; indices refer to the symbol order given to lowering."""

    const: float
    terms: tuple[tuple[int, float], ...] = ()

    def evaluate(self, values: np.ndarray) -> np.ndarray:
        """t for symbol values ``[..., n_symbols]``."""
        out = np.full(values.shape[:-1], self.const, dtype=np.float64)
        for index, coef in self.terms:
            out = out + coef * values[..., index]
        return out


@dataclass(frozen=True, eq=False)
class LoweredOp:
    """One operation in spectral form (see module docstring).

    Attributes:
        qubits: indices into the qubit order, in the gate's own qubit order (controls first).
        param: the affine parameter t, or None for a fixed gate.
        freqs: a_k, float64[K]. phases: b_k, float64[K]. projectors: Q_k, complex128[K, d, d].
        diagonal: every Q_k is diagonal.
        label: the cirq operation, for messages.
        index: position in the lowered circuit.
        source: the cirq operation it came from (after decomposition), for rebuilding it with a new parameter.
    """

    qubits: tuple[int, ...]
    param: Affine | None
    freqs: np.ndarray
    phases: np.ndarray
    projectors: np.ndarray
    diagonal: bool
    label: str
    index: int = -1
    source: cirq.Operation | None = None

    def unitary(self, t: float = 0.0) -> np.ndarray:
        """The gate's matrix at parameter value ``t`` (numpy, complex128)."""
        weights = np.exp(1j * (self.freqs * t + self.phases))
        return np.einsum("k,kij->ij", weights, self.projectors)


@dataclass(frozen=True)
class LoweredCircuit:
    """A circuit as a sequence of ``LoweredOp`` over ``n_qubits`` qubits and ``n_symbols`` symbols."""

    ops: tuple[LoweredOp, ...]
    n_qubits: int
    n_symbols: int

    @property
    def parametric(self) -> tuple[LoweredOp, ...]:
        """Ops whose matrix depends on symbols, in circuit order."""
        return tuple(op for op in self.ops if op.param is not None)


def to_affine(expr: object, symbol_index: Mapping[sympy.Symbol, int], where: str) -> Affine:
    """Parse a gate parameter as an affine function of known symbols.

    Raises:
        UnresolvedSymbolError: a symbol in ``expr`` is not in ``symbol_index``.
        NonlinearParameterError: ``expr`` is not affine in its symbols.
    """
    expr = sympy.sympify(expr)
    unknown = sorted((s for s in expr.free_symbols if s not in symbol_index), key=str)
    if unknown:
        raise UnresolvedSymbolError(
            f"symbol {unknown[0]} in {where} has no value; known symbols are "
            f"{sorted(map(str, symbol_index))}: add it to the inputs or weights, or resolve it first"
        )
    terms = []
    for symbol in sorted(expr.free_symbols, key=str):
        coef = sympy.diff(expr, symbol)
        if coef.free_symbols:
            raise NonlinearParameterError(
                f"parameter {expr} of {where} is not affine in {symbol}; write it as c0 + c1*a + c2*b + ..."
            )
        terms.append((symbol_index[symbol], float(coef)))
    const = expr.subs({s: 0 for s in expr.free_symbols})
    return Affine(const=float(const), terms=tuple(terms))


def _is_diagonal(projectors: np.ndarray) -> bool:
    """Diagonal, and (with several terms) a 0/1 partition of the basis, so the log-phase is affine in t."""
    d = projectors.shape[-1]
    if np.any(np.abs(projectors * (1 - np.eye(d))) > 1e-12):
        return False
    if len(projectors) == 1:
        return True
    diag = np.real(np.stack([np.diagonal(q) for q in projectors]))
    return bool(np.allclose(diag * (1 - diag), 0) and np.allclose(diag.sum(axis=0), 1))


def _fixed(op: cirq.Operation, qubits: tuple[int, ...]) -> LoweredOp:
    u = cirq.unitary(op).astype(np.complex128)
    return LoweredOp(qubits, None, np.zeros(1), np.zeros(1), u[None], _is_diagonal(u[None]), str(op))


def _eigen(op: cirq.Operation, gate: cirq.EigenGate, qubits, symbol_index) -> LoweredOp:
    comps = gate._eigen_components()  # public-in-practice protocol of EigenGate: (half_turns, projector)
    shift = gate._global_shift
    freqs = np.array([np.pi * (half_turns + shift) for half_turns, _ in comps])
    projectors = np.stack([np.asarray(p, dtype=np.complex128) for _, p in comps])
    param = to_affine(gate.exponent, symbol_index, str(op))
    return LoweredOp(qubits, param, freqs, np.zeros(len(comps)), projectors, _is_diagonal(projectors), str(op))


def _controlled(op, gate: cirq.ControlledGate, qubits, symbol_index) -> LoweredOp | None:
    sub_qubits = op.qubits[gate.num_controls() :]
    sub = _lower_one(gate.sub_gate.on(*sub_qubits), qubits[gate.num_controls() :], symbol_index)
    if sub is None or len(sub) != 1 or sub[0].param is None:
        return None
    (inner,) = sub
    # I - 2 P_on (x) I is the unitary of the same control structure around -I: a public way to get P_on.
    d_sub = inner.projectors.shape[-1]
    marker = cirq.ControlledGate(
        cirq.MatrixGate(-np.eye(d_sub), qid_shape=cirq.qid_shape(gate.sub_gate)),
        num_controls=gate.num_controls(),
        control_values=gate.control_values,
        control_qid_shape=gate.control_qid_shape,
    )
    on = (np.eye(d_sub * np.prod(gate.control_qid_shape)) - cirq.unitary(marker)).real / 2
    p_on = np.diag(on)[:: d_sub]  # control-space indicator
    off = np.eye(len(on)) - on
    projectors = np.concatenate([off[None], np.stack([np.kron(np.diag(p_on), q) for q in inner.projectors])])
    return LoweredOp(
        qubits,
        inner.param,
        np.concatenate([[0.0], inner.freqs]),
        np.concatenate([[0.0], inner.phases]),
        projectors,
        _is_diagonal(projectors),
        str(op),
    )


def _lower_one(op: cirq.Operation, qubits: tuple[int, ...], symbol_index) -> list[LoweredOp] | None:
    gate = op.gate
    if not cirq.is_parameterized(op):
        if cirq.has_unitary(op):
            return [_fixed(op, qubits)]
        return None
    if isinstance(gate, cirq.EigenGate):
        return [_eigen(op, gate, qubits, symbol_index)]
    if isinstance(gate, cirq.ControlledGate):
        lowered = _controlled(op, gate, qubits, symbol_index)
        return None if lowered is None else [lowered]
    return None


def lower_circuit(
    circuit: cirq.Circuit, qubits: Sequence[cirq.Qid], symbols: Sequence[sympy.Symbol]
) -> LoweredCircuit:
    """Lower ``circuit`` to spectral-form ops over ``qubits`` (their order) and ``symbols`` (their order).

    Raises:
        UnsupportedGateError: an operation is neither a fixed unitary nor a supported symbolic gate.
        UnresolvedSymbolError, NonlinearParameterError: see ``to_affine``.
    """
    qubit_index = {q: i for i, q in enumerate(qubits)}
    symbol_index = {s: i for i, s in enumerate(symbols)}
    ops: list[LoweredOp] = []
    pending = list(circuit.all_operations())[::-1]
    while pending:
        op = pending.pop()
        idx = tuple(qubit_index[q] for q in op.qubits)
        lowered = _lower_one(op, idx, symbol_index)
        if lowered is None:
            decomposed = cirq.decompose_once(op, default=None) if cirq.is_parameterized(op) else None
            if decomposed is None:
                raise UnsupportedGateError(
                    f"cannot compile {op!r} (gate {type(op.gate).__name__}); supported: {SUPPORTED_GATES}. "
                    "Replace it with supported gates or resolve its parameters first"
                )
            pending.extend(reversed(list(cirq.flatten_to_ops(decomposed))))
            continue
        ops.extend(dataclasses.replace(lo, source=op) for lo in lowered)
    ops = [_with_index(op, i) for i, op in enumerate(ops)]
    return LoweredCircuit(tuple(ops), len(qubits), len(symbols))


def _with_index(op: LoweredOp, index: int) -> LoweredOp:
    return dataclasses.replace(op, index=index)
