"""Group lowered ops into fused stages: what the simulator applies as one step.

Three kinds of stage:
- ``LocalStage``: single-qubit gates, at most one 2x2 product per qubit; applied as a tensor-product
  (Kronecker-block) contraction over the whole register.
- ``DiagStage``: diagonal gates of any arity (CZ/CRZ rings, RZ, phases); applied as one elementwise phase.
- ``DenseStage``: one non-diagonal multi-qubit gate (CNOT, SWAP, ISWAP, CRX, ...).

Ops are moved earlier only past stages they commute with: past stages on other qubits, and diagonal ops past
diagonal stages. So the product of the stages equals the circuit's unitary exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantum.lowering import LoweredCircuit, LoweredOp


@dataclass(eq=False)
class LocalStage:
    """Single-qubit gates; ``ops[q]`` are the gates on qubit q in application order."""

    ops: dict[int, list[LoweredOp]] = field(default_factory=dict)

    @property
    def qubits(self) -> set[int]:
        return set(self.ops)

    @property
    def all_ops(self) -> list[LoweredOp]:
        return [op for q in sorted(self.ops) for op in self.ops[q]]


@dataclass(eq=False)
class DiagStage:
    """Mutually commuting diagonal gates."""

    ops: list[LoweredOp] = field(default_factory=list)

    @property
    def qubits(self) -> set[int]:
        return {q for op in self.ops for q in op.qubits}

    @property
    def all_ops(self) -> list[LoweredOp]:
        return list(self.ops)


@dataclass(eq=False)
class DenseStage:
    """One general multi-qubit gate."""

    op: LoweredOp

    @property
    def qubits(self) -> set[int]:
        return set(self.op.qubits)

    @property
    def all_ops(self) -> list[LoweredOp]:
        return [self.op]


Stage = LocalStage | DiagStage | DenseStage


def _last(stages: list[Stage], qubits: set[int], *, skip_diag: bool) -> int:
    """Index of the latest stage touching ``qubits`` (ignoring diagonal stages if ``skip_diag``), or -1."""
    for i in range(len(stages) - 1, -1, -1):
        if skip_diag and isinstance(stages[i], DiagStage):
            continue
        if stages[i].qubits & qubits:
            return i
    return -1


def _first_after(stages: list[Stage], start: int, kind: type, qubit: int | None = None) -> int:
    for i in range(start + 1, len(stages)):
        if isinstance(stages[i], kind) and (qubit is None or qubit not in stages[i].qubits):
            return i
    return -1


def _place_diagonal(stages: list[Stage], op: LoweredOp) -> bool:
    """Put a diagonal op into a diagonal stage it can commute back to; False if there is none."""
    j = _first_after(stages, _last(stages, set(op.qubits), skip_diag=True), DiagStage)
    if j < 0:
        return False
    stages[j].ops.append(op)
    return True


def _place_single(stages: list[Stage], op: LoweredOp) -> None:
    (q,) = op.qubits
    front = _last(stages, {q}, skip_diag=False)
    if front >= 0 and isinstance(stages[front], LocalStage):
        stages[front].ops[q].append(op)
        return
    j = _first_after(stages, front, LocalStage, qubit=q)
    if j < 0:
        stages.append(LocalStage())
        j = len(stages) - 1
    stages[j].ops[q] = [op]


def fuse(lowered: LoweredCircuit) -> list[Stage]:
    """The stages of ``lowered`` in application order."""
    stages: list[Stage] = []
    for op in lowered.ops:
        if op.diagonal and len(op.qubits) > 1:
            if not _place_diagonal(stages, op):
                stages.append(DiagStage([op]))
        elif len(op.qubits) == 1:
            front = _last(stages, set(op.qubits), skip_diag=False)
            joins_diag = op.diagonal and front >= 0 and isinstance(stages[front], DiagStage)
            if not (joins_diag and _place_diagonal(stages, op)):
                _place_single(stages, op)
        else:
            stages.append(DenseStage(op))
    return stages


def signature(stage: Stage) -> tuple:
    """Everything about a stage except its parameter values: equal signatures mean one kernel fits both."""
    ops = tuple(
        (op.qubits, op.param is None, op.freqs.tobytes(), op.phases.tobytes(), op.projectors.tobytes())
        for op in stage.all_ops
    )
    return (type(stage).__name__, ops)


def repeats(signatures: list[tuple], eligible: list[bool], max_period: int = 8) -> list[tuple[int, int, int]]:
    """Split stages into runs ``(start, period, reps)``: ``reps`` copies of ``period`` identical stages.

    Only ``eligible`` stages take part in runs with reps >= 2; every other stage is a run of (i, 1, 1). A
    repeated run becomes one ``lax.scan``, so program size and buffer reuse do not depend on circuit depth.
    """
    runs, i, n = [], 0, len(signatures)
    while i < n:
        best = (1, 1)
        for period in range(1, max_period + 1):
            block = signatures[i : i + period]
            if len(block) < period or not all(eligible[i : i + period]):
                break
            reps = 1
            while (
                signatures[i + reps * period : i + (reps + 1) * period] == block
                and all(eligible[i + reps * period : i + (reps + 1) * period])
            ):
                reps += 1
            if reps >= 2 and reps * period > best[0] * best[1]:
                best = (period, reps)
        runs.append((i, *best))
        i += best[0] * best[1]
    return runs
