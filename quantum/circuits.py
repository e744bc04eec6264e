"""The QTHA ansatz as a ``cirq.Circuit`` with sympy symbols, built from a frozen spec.

The cirq circuit is the single source of truth: every backend (the JAX simulator, qsim, samplers) consumes the
``QnnCircuit`` record produced here, so the ansatz is written down exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cirq
import jax
import jax.numpy as jnp
import sympy

from quantum.errors import QuantumSpecError

Encoding = Literal["angle", "none"]
Entangler = Literal["crz_ring", "cz_ring"]
Readout = Literal["z", "probs"]
FeatureMap = Literal["pi_tanh", "identity"]

ENCODINGS: tuple[str, ...] = ("angle", "none")
ENTANGLERS: tuple[str, ...] = ("crz_ring", "cz_ring")
READOUTS: tuple[str, ...] = ("z", "probs")
FEATURE_MAPS: tuple[str, ...] = ("pi_tanh", "identity")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise QuantumSpecError(f"{name}={value!r} is not supported; choose one of {allowed}")


@dataclass(frozen=True)
class CircuitSpec:
    """Shape of a QNN circuit. The defaults are the QTHA paper's circuit (10 qubits, 10 layers).

    Attributes:
        n_qubits: qubits in the register (>= 2 for the ring entanglers).
        n_layers: repetitions of {RY layer, entangling ring, RY layer, reverse entangling ring}.
        encoding: ``"angle"`` puts RY(x_i) on qubit i, where ``make_qnn`` feeds x_i = pi*tanh(h_i) of the raw
            feature h_i; ``"none"`` has no inputs (weight mode).
        entangler: ``"crz_ring"`` (trainable CRZ, control i -> target i+1 mod n, then the reverse ring i -> i-1)
            or ``"cz_ring"`` (fixed CZ rings, half the weights).
        readout: ``"z"`` for <Z_i> of every qubit, ``"probs"`` for the 2**n basis-state probabilities.

    Example:
        >>> spec = CircuitSpec(n_qubits=4, n_layers=2)
        >>> spec.n_inputs, spec.n_weights, spec.n_outputs
        (4, 32, 4)
    """

    n_qubits: int = 10
    n_layers: int = 10
    encoding: Encoding = "angle"
    entangler: Entangler = "crz_ring"
    readout: Readout = "z"

    def __post_init__(self) -> None:
        if not isinstance(self.n_qubits, int) or self.n_qubits < 2:
            raise QuantumSpecError(f"n_qubits={self.n_qubits!r}: the ring entanglers need an int >= 2")
        if not isinstance(self.n_layers, int) or self.n_layers < 0:
            raise QuantumSpecError(f"n_layers={self.n_layers!r}: pass an int >= 0")
        _check_choice("encoding", self.encoding, ENCODINGS)
        _check_choice("entangler", self.entangler, ENTANGLERS)
        _check_choice("readout", self.readout, READOUTS)

    @property
    def n_inputs(self) -> int:
        """Features the circuit encodes: ``n_qubits`` for angle encoding, 0 for none."""
        return self.n_qubits if self.encoding == "angle" else 0

    @property
    def n_weights(self) -> int:
        """Trainable angles: 4*n*L with CRZ rings, 2*n*L with fixed CZ rings."""
        per_layer = 4 if self.entangler == "crz_ring" else 2
        return per_layer * self.n_qubits * self.n_layers

    @property
    def n_outputs(self) -> int:
        """Readout width: n for <Z_i>, 2**n for basis probabilities."""
        return self.n_qubits if self.readout == "z" else 2**self.n_qubits


@dataclass(frozen=True)
class QnnCircuit:
    """A parameterised circuit plus what is needed to evaluate it as a QNN.

    Symbol values are passed as ``inputs[B, len(input_symbols)]`` and ``weights[len(weight_symbols)]``.

    Attributes:
        circuit: the cirq circuit; parameters are sympy expressions of the symbols below.
        qubits: the qubit order of the readout (Z_i order; big-endian basis index for probabilities).
        input_symbols: per-example symbols (batched).
        weight_symbols: shared symbols (trainable weights).
        readout: ``"z"`` or ``"probs"``.
        feature_map: ``"pi_tanh"`` if ``make_qnn`` maps raw features h to angles pi*tanh(h) before binding
            them to the input symbols, ``"identity"`` if inputs are bound as given.
        spec: the spec the circuit was built from, if any.
    """

    circuit: cirq.Circuit
    qubits: tuple[cirq.Qid, ...]
    input_symbols: tuple[sympy.Symbol, ...]
    weight_symbols: tuple[sympy.Symbol, ...]
    readout: Readout = "z"
    feature_map: FeatureMap = "identity"
    spec: CircuitSpec | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check_choice("readout", self.readout, READOUTS)
        _check_choice("feature_map", self.feature_map, FEATURE_MAPS)
        names = [s.name for s in self.symbols]
        if len(set(names)) != len(names):
            raise QuantumSpecError(f"symbols {names} repeat a name; give every input and weight its own symbol")
        missing = set(self.circuit.all_qubits()) - set(self.qubits)
        if missing:
            raise QuantumSpecError(f"circuit acts on {sorted(missing)} which are not in qubits; add them")
        if len(set(self.qubits)) != len(self.qubits):
            raise QuantumSpecError(f"qubits {self.qubits} repeat a qubit")

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        """All symbols: inputs first, then weights (the column order of ``values`` in ``Backend.evaluate``)."""
        return tuple(self.input_symbols) + tuple(self.weight_symbols)

    @property
    def n_outputs(self) -> int:
        """Readout width."""
        return len(self.qubits) if self.readout == "z" else 2 ** len(self.qubits)


def _ring(gate_for, qubits: list[cirq.LineQubit], step: int) -> list[cirq.Operation]:
    n = len(qubits)
    return [gate_for(i).on(qubits[i], qubits[(i + step) % n]) for i in range(n)]


def build_circuit(spec: CircuitSpec) -> QnnCircuit:
    """Build the QTHA ansatz described by ``spec``.

    Per layer: RY(theta) on every qubit, a ring of controlled gates (control i -> target i+1 mod n), RY(theta) on
    every qubit, the reverse ring (control i -> target i-1 mod n). Weight symbols are ``theta_<k>`` in that
    order; input symbols are ``x_<i>``.

    Args:
        spec: the circuit shape.

    Returns:
        The circuit record; ``len(weight_symbols) == spec.n_weights``.
    """
    n = spec.n_qubits
    qubits = cirq.LineQubit.range(n)
    inputs = tuple(sympy.Symbol(f"x_{i}") for i in range(spec.n_inputs))
    weights: list[sympy.Symbol] = []

    def weight() -> sympy.Symbol:
        weights.append(sympy.Symbol(f"theta_{len(weights)}"))
        return weights[-1]

    def entangler(_: int) -> cirq.Gate:
        return cirq.rz(weight()).controlled() if spec.entangler == "crz_ring" else cirq.CZ

    circuit = cirq.Circuit(cirq.ry(x).on(q) for x, q in zip(inputs, qubits, strict=False))
    for _ in range(spec.n_layers):
        circuit += [cirq.ry(weight()).on(q) for q in qubits]
        circuit += _ring(entangler, qubits, +1)
        circuit += [cirq.ry(weight()).on(q) for q in qubits]
        circuit += _ring(entangler, qubits, -1)
    return QnnCircuit(
        circuit=circuit,
        qubits=tuple(qubits),
        input_symbols=inputs,
        weight_symbols=tuple(weights),
        readout=spec.readout,
        feature_map="pi_tanh" if spec.encoding == "angle" else "identity",
        spec=spec,
    )


def init_weights(spec: CircuitSpec, key: jax.Array, *, scale: float = 0.01) -> jax.Array:
    """Small random initial angles, so the circuit starts close to its input encoding.

    Args:
        spec: the circuit shape.
        key: a ``jax.random`` key.
        scale: standard deviation of the normal draw, in radians.

    Returns:
        float32[spec.n_weights].
    """
    return scale * jax.random.normal(key, (spec.n_weights,), dtype=jnp.float32)
