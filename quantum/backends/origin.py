"""Origin Quantum's QCloud (the 72-qubit Wukong) through pyqpanda3, with circuits translated via OpenQASM 2.

``pyqpanda3`` is the optional ``origin`` extra and is imported only inside these functions. The translation is
checked against qsim in the tests by running the translated program on pyqpanda3's local simulator.

Bit orders: cirq is big-endian (qubit 0 is the most significant bit of a basis index); pyqpanda3's state vectors
are little-endian, and its count keys print the highest classical bit first.

Reaching the chip: ``QCloudBackend.run(progs, shots)`` without options is documented (pyqpanda3 0.5) to route
through the *noise-model* entry point, which is the one that also serves the cloud's full-amplitude simulators;
only an explicit ``QCloudOptions`` selects the QPU path (amendment, mapping, optimisation). The adapter therefore
always passes one, built from :class:`OriginRunOptions`.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cirq
import numpy as np

from quantum.qpu.errors import JobNotDoneError, JobTooLargeError, TransientBackendError, TransientKind
from quantum.qpu.pricing import DevicePricing
from quantum.qpu.protocol import JobState, JobStatus, Program, ProgramResult

_CREG = re.compile(r"^creg\s+\w+\[(\d+)\];", re.MULTILINE)


@dataclass(frozen=True)
class Translated:
    """A circuit as an OpenQASM 2 program for pyqpanda3, with its classical-bit layout.

    Attributes:
        qasm: the OpenQASM 2 text (what Origin's cloud receives).
        keys: per measurement key, ``(first classical bit, width)``.
        qubits: per measurement key, the cirq qubits read, in bit order.
    """

    qasm: str
    keys: Mapping[str, tuple[int, int]]
    qubits: Mapping[str, tuple[cirq.Qid, ...]]


def translate(circuit: cirq.AbstractCircuit) -> Translated:
    """Resolve-free translation of a concrete circuit to OpenQASM 2 (``cirq.qasm``).

    Raises:
        ValueError: the circuit still has symbols (resolve them first), or a key is measured twice.
    """
    if cirq.is_parameterized(circuit):
        raise ValueError("resolve the circuit's parameters before translating it to OpenQASM")
    measured: dict[str, tuple[cirq.Qid, ...]] = {}
    for op in circuit.all_operations():
        if cirq.is_measurement(op):
            key = cirq.measurement_key_name(op)
            if key in measured:
                raise ValueError(
                    f"measurement key {key!r} is used twice; OpenQASM 2 needs one register per key"
                )
            measured[key] = tuple(op.qubits)
    qasm = cirq.qasm(circuit)
    widths = [int(w) for w in _CREG.findall(qasm)]
    # cirq declares one register per key, in order of first appearance.
    if widths != [len(q) for q in measured.values()]:
        raise ValueError(f"unexpected classical registers {widths} for keys {list(measured)}")
    offsets = itertools.accumulate([0, *widths])
    keys = {key: (offset, len(qs)) for (key, qs), offset in zip(measured.items(), offsets, strict=False)}
    return Translated(qasm, keys, measured)


def to_qprog(translated: Translated) -> Any:
    """The pyqpanda3 ``QProg`` of a translated circuit."""
    from pyqpanda3.intermediate_compiler import convert_qasm_string_to_qprog  # type: ignore[attr-defined]

    return convert_qasm_string_to_qprog(translated.qasm)


def _as_counts(counts: Mapping[str, float], shots: int | None) -> dict[str, int]:
    """Integer counts; probabilities (QCloud returns them with ``is_prob_counts`` or amendment) are scaled to
    ``shots`` by largest remainder, so the rows still number exactly ``shots``."""
    values = {k: float(v) for k, v in counts.items()}
    if shots is None or all(v == int(v) for v in values.values()) and sum(values.values()) == shots:
        return {k: int(v) for k, v in values.items()}
    total = sum(values.values()) or 1.0
    exact = {k: v / total * shots for k, v in values.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[: shots - sum(out.values())]:
        out[k] += 1
    return out


def counts_to_result(
    counts: Mapping[str, float], translated: Translated, params: cirq.ParamResolver, *, shots: int | None = None
) -> cirq.Result:
    """pyqpanda3 counts (highest classical bit first) → a cirq result with one row per shot.

    Args:
        counts: bit string → count, or → probability when ``shots`` is given and the values are not counts.
        translated: the program's classical-bit layout.
        params: the resolver recorded in the result.
        shots: the shots the program ran; needed to turn probabilities into rows.
    """
    rows = []
    for bitstring, count in sorted(_as_counts(counts, shots).items()):
        cbits = [int(b) for b in reversed(bitstring)]  # index = classical bit
        rows.extend([cbits] * int(count))
    table = np.array(rows, dtype=np.int8).reshape(len(rows), -1)
    measurements = {key: table[:, start : start + width] for key, (start, width) in translated.keys.items()}
    return cirq.ResultDict(params=params, measurements=measurements)


class OriginLocalSampler(cirq.Sampler):
    """Runs circuits on pyqpanda3's local ``CPUQVM`` after translating them as Origin's cloud would receive them."""

    def run_sweep(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """Translate each resolved circuit and sample it on CPUQVM."""
        from pyqpanda3.core import CPUQVM  # type: ignore[attr-defined]

        out = []
        for resolver in cirq.to_resolvers(params):
            translated = translate(cirq.resolve_parameters(program, resolver))
            qvm = CPUQVM()
            qvm.run(to_qprog(translated), repetitions)
            out.append(counts_to_result(qvm.result().get_counts(), translated, resolver))
        return out


def local_state_vector(circuit: cirq.AbstractCircuit) -> np.ndarray:
    """The translated circuit's final state on CPUQVM, reordered to cirq's big-endian convention.

    The circuit must be measurement-free and act on the qubits ``sorted(circuit.all_qubits())``.
    """
    from pyqpanda3.core import CPUQVM  # type: ignore[attr-defined]

    qvm = CPUQVM()
    qvm.run(to_qprog(translate(circuit)), 1)
    vector = np.asarray(qvm.result().get_state_vector(), dtype=complex)
    n = int(np.log2(len(vector)))
    return vector.reshape((2,) * n).transpose(tuple(reversed(range(n)))).reshape(-1)


_STATES = {"FINISHED": JobState.DONE, "FAILED": JobState.FAILED, "COMPUTING": JobState.RUNNING}
# Words in the SDK's error text that mean the chip is down rather than the request or the server being wrong.
_OFFLINE_WORDS = ("offline", "maintenance", "maintain", "unavailable", "not available", "calibrating")


@dataclass(frozen=True)
class OriginRunOptions:
    """What QCloud is asked to do with each batch (pyqpanda3's ``QCloudOptions``; always passed, see the module).

    Attributes:
        amend: readout-error amendment on Origin's side (``amend_flag`` 1; 0 when off). Counts may then come back
            as probabilities, which the adapter scales to shots.
        mapping: let QCloud map logical to physical qubits.
        optimization: let QCloud optimise the circuit for the chip.
    """

    amend: bool = True
    mapping: bool = True
    optimization: bool = True

    def to_qcloud(self) -> Any:
        """The pyqpanda3 ``QCloudOptions`` object."""
        from pyqpanda3.qcloud import QCloudOptions  # type: ignore[attr-defined]

        return QCloudOptions(
            amend_flag=1 if self.amend else 0, mapping=self.mapping, optimization=self.optimization
        )


def _connect(api_key: str, backend_name: str) -> Any:
    from pyqpanda3.qcloud import QCloudService  # type: ignore[attr-defined]

    return QCloudService(api_key).backend(backend_name)


@dataclass(frozen=True)
class _Redactor:
    """Removes the API key from any text the SDK produces before it reaches a message or a log."""

    secret: str | None = field(default=None, repr=False)

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "<api key>") if self.secret else text


def _transient_kind(message: str) -> TransientKind:
    lowered = message.lower()
    return "device_offline" if any(word in lowered for word in _OFFLINE_WORDS) else "server_error"


class OriginQCloudBackend:
    """Origin QCloud as a :class:`~quantum.qpu.protocol.JobBackend`.

    One job is one batch of programs sharing a shot count (Origin's batch API takes one ``shots``). Counts come
    back per program; Origin maps qubits on its side, so ``physical_qubits`` are the circuit's own qubits.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        backend_name: str | None = None,
        qcloud_backend: Any = None,
        max_programs_per_job: int = 200,
        pricing: DevicePricing | None = None,
        run_options: OriginRunOptions | None = None,
        connect: Callable[[str, str], Any] | None = None,
    ) -> None:
        """Connect to QCloud (or use an injected backend object with the same API).

        The API key is used to connect and then only to scrub SDK error text: it appears in no message, log or
        ``repr``.

        Args:
            api_key: the QCloud API key (the agent reads it from a file or the environment, never the config).
            backend_name: the chip (e.g. the 72-qubit Wukong), as ``QCloudService(api_key).backends()`` lists it.
            qcloud_backend: an object with QCloudBackend's ``run(progs, shots, options)`` (tests, custom sessions).
            max_programs_per_job: Origin's batch cap (~200).
            pricing: Origin's prices, for spend limits; free by default (then a money limit never binds).
            run_options: amendment, mapping and optimisation asked of QCloud for every batch.
            connect: ``(api_key, backend_name) -> backend`` (default: ``QCloudService(api_key).backend(name)``).

        Raises:
            ValueError: neither credentials nor an injected backend.
            ConnectionError: QCloud refused the key or has no such chip (the message names the chip, not the key).
        """
        self._redact = _Redactor(api_key)
        if qcloud_backend is None:
            if not api_key or not backend_name:
                raise ValueError(
                    "OriginQCloudBackend needs api_key and backend_name (list the chips with "
                    "pyqpanda3.qcloud.QCloudService(api_key).backends()), or an injected qcloud_backend"
                )
            try:
                qcloud_backend = (connect or _connect)(api_key, backend_name)
            except Exception as err:  # noqa: BLE001 - any SDK failure; re-raised without the key, chain dropped
                raise ConnectionError(
                    f"cannot open QCloud backend {backend_name!r}: {self._redact(str(err))}; check the API key "
                    "file or variable and the chip name (QCloudService(api_key).backends() lists them)"
                ) from None
        self._backend = qcloud_backend
        self._cap = max_programs_per_job
        self.pricing = pricing or DevicePricing.free()
        self.run_options = run_options or OriginRunOptions()
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[Any, tuple[Program, ...], tuple[Translated, ...]]] = {}
        self._tokens: dict[str, str] = {}

    @property
    def max_programs_per_job(self) -> int:
        """Origin's batch cap."""
        return self._cap

    def estimate_cost(self, programs: Sequence[Program]) -> float:
        """The job's price under ``pricing``."""
        return self.pricing.job_cost(programs)

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        """Translate and submit a batch; idempotent per ``client_token``."""
        programs = tuple(programs)
        shots = {p.repetitions for p in programs}
        if len(shots) != 1:
            raise JobTooLargeError(
                f"Origin runs a batch with one shot count; got {sorted(shots)}: group by shots"
            )
        if len(programs) > self._cap:
            raise JobTooLargeError(f"{len(programs)} programs exceed Origin's cap of {self._cap} per batch")
        with self._lock:
            if client_token in self._tokens:
                return self._tokens[client_token]
        translated = tuple(translate(cirq.resolve_parameters(p.circuit, p.params)) for p in programs)
        try:
            job = self._backend.run(
                [to_qprog(t) for t in translated], shots.pop(), self.run_options.to_qcloud()
            )
        except RuntimeError as err:  # the SDK reports network, server and chip trouble as RuntimeError
            message = self._redact(str(err))
            raise TransientBackendError(_transient_kind(message), f"QCloud refused the batch: {message}") from None
        job_id = str(job.job_id())
        with self._lock:
            self._jobs[job_id] = (job, programs, translated)
            self._tokens[client_token] = job_id
        return job_id

    def status(self, job_id: str) -> JobStatus:
        """QCloud's status mapped onto the common lifecycle."""
        job = self._jobs[job_id][0]
        try:
            name = job.status().name
        except RuntimeError as err:
            message = self._redact(str(err))
            raise TransientBackendError(_transient_kind(message), f"status query failed: {message}") from None
        state = _STATES.get(name, JobState.QUEUED)  # QUEUING, WAITING
        if state is JobState.FAILED:
            return JobStatus(state, error_kind="server_error", message=f"QCloud job {job_id} failed")
        return JobStatus(state)

    def results(self, job_id: str) -> list[ProgramResult]:
        """Per-program counts of a finished job as cirq results."""
        if self.status(job_id).state is not JobState.DONE:
            raise JobNotDoneError(f"QCloud job {job_id} has not finished")
        job, programs, translated = self._jobs[job_id]
        counts = job.result().get_counts_list()
        return [
            ProgramResult(counts_to_result(c, t, p.params, shots=p.repetitions), dict(t.qubits))
            for c, t, p in zip(counts, translated, programs, strict=True)
        ]

    def cancel(self, job_id: str) -> None:
        """Ask QCloud to cancel the job."""
        self._jobs[job_id][0].cancel()
