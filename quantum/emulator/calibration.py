"""A calibration snapshot: per-qubit T1/T2 and gate/readout errors, per-coupler errors, dead couplers; JSON I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cirq
import networkx as nx
import numpy as np

from quantum.emulator.device import DeviceSpec, coupler_key

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class QubitCalibration:
    """One qubit's measured figures.

    Attributes:
        t1_s: energy relaxation time.
        t2_s: dephasing time (``t2_s <= 2 * t1_s``).
        single_qubit_error: depolarizing probability per PhasedXZ gate.
        readout_p01: probability of reading 1 when the qubit is in |0⟩.
        readout_p10: probability of reading 0 when the qubit is in |1⟩ (usually larger: |1⟩ decays while read).
    """

    t1_s: float
    t2_s: float
    single_qubit_error: float
    readout_p01: float
    readout_p10: float

    def __post_init__(self) -> None:
        if not (0 < self.t2_s <= 2 * self.t1_s):
            raise ValueError(f"need 0 < T2 <= 2*T1, got T1={self.t1_s}, T2={self.t2_s}")
        for name in ("single_qubit_error", "readout_p01", "readout_p10"):
            value = getattr(self, name)
            if not 0 <= value < 0.5:
                raise ValueError(f"{name} must lie in [0, 0.5), got {value}")

    def confusion(self) -> np.ndarray:
        """The 2×2 readout confusion matrix ``M[read, true]``."""
        return np.array(
            [[1 - self.readout_p01, self.readout_p10], [self.readout_p01, 1 - self.readout_p10]], dtype=float
        )


@dataclass(frozen=True)
class Calibration:
    """A device's calibration snapshot. Treat the mappings as read-only.

    Attributes:
        device_name: the device this snapshot belongs to.
        timestamp: when it was taken (ISO 8601 text; informational).
        qubits: per-qubit figures.
        two_qubit_errors: per live coupler (sorted pair), the two-qubit depolarizing probability per gate.
        dead_couplers: couplers that cannot run a gate today.
    """

    device_name: str
    timestamp: str
    qubits: Mapping[cirq.Qid, QubitCalibration]
    two_qubit_errors: Mapping[tuple[cirq.Qid, cirq.Qid], float]
    dead_couplers: frozenset[tuple[cirq.Qid, cirq.Qid]]

    @classmethod
    def ideal(cls, device: DeviceSpec) -> Calibration:
        """A noiseless snapshot (infinite-ish coherence, zero errors, every coupler alive)."""
        perfect = QubitCalibration(
            t1_s=np.inf, t2_s=np.inf, single_qubit_error=0.0, readout_p01=0.0, readout_p10=0.0
        )
        return cls(
            device_name=device.name,
            timestamp="ideal",
            qubits={q: perfect for q in device.qubits()},
            two_qubit_errors={pair: 0.0 for pair in device.couplers()},
            dead_couplers=frozenset(),
        )

    @classmethod
    def synthetic(
        cls,
        device: DeviceSpec,
        *,
        seed: int,
        dead_coupler_fraction: float = 0.04,
        scale: float = 1.0,
    ) -> Calibration:
        """A plausible random snapshot of a transmon chip, reproducible from ``seed``.

        Figures are drawn around published superconducting-chip medians (T1 ≈ 30 µs, 1q error ≈ 1e-3, 2q error
        ≈ 1.5e-2, readout ≈ 2–5 %), multiplied by ``scale`` for the error rates. Dead couplers are chosen so the
        coupling graph stays connected (a disconnected chip cannot route).

        Args:
            device: the device shape.
            seed: seeds every draw.
            dead_coupler_fraction: fraction of couplers to mark dead.
            scale: multiplies every error rate (and divides coherence times); 0 gives an almost ideal chip.
        """
        rng = np.random.default_rng(seed)
        qubits: dict[cirq.Qid, QubitCalibration] = {}
        for q in device.qubits():
            t1 = rng.uniform(20e-6, 45e-6) / max(scale, 1e-9)
            t2 = min(2 * t1, rng.uniform(0.5, 1.5) * t1)
            qubits[q] = QubitCalibration(
                t1_s=t1,
                t2_s=t2,
                single_qubit_error=float(np.clip(scale * rng.lognormal(np.log(1e-3), 0.4), 0, 0.2)),
                readout_p01=float(np.clip(scale * rng.uniform(0.01, 0.03), 0, 0.3)),
                readout_p10=float(np.clip(scale * rng.uniform(0.03, 0.07), 0, 0.3)),
            )
        couplers = list(device.couplers())
        errors: dict[tuple[cirq.Qid, cirq.Qid], float] = {
            pair: float(np.clip(scale * rng.lognormal(np.log(1.5e-2), 0.3), 0, 0.3)) for pair in couplers
        }
        graph = nx.Graph(couplers)
        dead: set[tuple[cirq.Qid, cirq.Qid]] = set()
        for index in rng.permutation(len(couplers)):
            if len(dead) >= round(dead_coupler_fraction * len(couplers)):
                break
            pair = couplers[index]
            graph.remove_edge(*pair)
            if nx.is_connected(graph):
                dead.add(pair)
            else:
                graph.add_edge(*pair)
        for pair in dead:
            errors.pop(pair)
        return cls(device.name, f"synthetic-seed-{seed}", qubits, errors, frozenset(dead))

    def is_dead(self, a: cirq.Qid, b: cirq.Qid) -> bool:
        """True when the coupler between ``a`` and ``b`` is marked dead."""
        return coupler_key(a, b) in self.dead_couplers

    def coupling_graph(self) -> nx.Graph:
        """The live couplers as a graph over GridQubits (what the router may use)."""
        graph = nx.Graph()
        graph.add_nodes_from(self.qubits)
        graph.add_edges_from(self.two_qubit_errors)
        return graph

    def confusion_matrices(self, qubits: Sequence[cirq.Qid]) -> list[np.ndarray]:
        """Per qubit, in the given order, the 2×2 confusion matrix ``M[read, true]``."""
        try:
            return [self.qubits[q].confusion() for q in qubits]
        except KeyError as err:
            raise KeyError(f"qubit {err.args[0]} has no calibration on device {self.device_name!r}") from None

    def to_json(self) -> str:
        """Serialise (with a schema version) to JSON text."""

        def name(q: cirq.Qid) -> str:
            assert isinstance(q, cirq.GridQubit), f"calibrations name grid qubits, got {q!r}"
            return f"{q.row}_{q.col}"

        return json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "device_name": self.device_name,
                "timestamp": self.timestamp,
                "qubits": {
                    name(q): {
                        "t1_s": c.t1_s,
                        "t2_s": c.t2_s,
                        "single_qubit_error": c.single_qubit_error,
                        "readout_p01": c.readout_p01,
                        "readout_p10": c.readout_p10,
                    }
                    for q, c in sorted(self.qubits.items())
                },
                "two_qubit_errors": {
                    f"{name(a)}-{name(b)}": e for (a, b), e in sorted(self.two_qubit_errors.items())
                },
                "dead_couplers": sorted(f"{name(a)}-{name(b)}" for a, b in self.dead_couplers),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Parse a snapshot written by :meth:`to_json`.

        Raises:
            ValueError: unknown schema version or malformed qubit names.
        """
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"calibration schema_version {data.get('schema_version')!r} is not supported (expected "
                f"{SCHEMA_VERSION}); re-export the snapshot with this qtha version"
            )

        def qubit(text: str) -> cirq.GridQubit:
            row, col = text.split("_")
            return cirq.GridQubit(int(row), int(col))

        def pair(text: str) -> tuple[cirq.Qid, cirq.Qid]:
            a, b = text.split("-")
            return coupler_key(qubit(a), qubit(b))

        return cls(
            device_name=data["device_name"],
            timestamp=data["timestamp"],
            qubits={qubit(k): QubitCalibration(**v) for k, v in data["qubits"].items()},
            two_qubit_errors={pair(k): float(v) for k, v in data["two_qubit_errors"].items()},
            dead_couplers=frozenset(pair(k) for k in data["dead_couplers"]),
        )
