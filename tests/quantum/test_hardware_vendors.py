"""Vendor adapters: samplers by import path, and Origin QCloud via OpenQASM 2 checked on pyqpanda3 against qsim."""

from __future__ import annotations

import importlib.util

import cirq
import numpy as np
import pytest
import qsimcirq
import sympy

from quantum.backends.vendor import sampler_from_import_path
from quantum.executor import Executor, ExecutorConfig, SamplerJobBackend
from quantum.qpu import JobState, Program
from tests.quantum.local_qcloud import LocalQCloudBackend
from tests.support.tools import needs_tool

HAVE_PYQPANDA3 = importlib.util.find_spec("pyqpanda3") is not None
needs_pyqpanda3 = needs_tool("pyqpanda3", available=HAVE_PYQPANDA3, how="pip install -e '.[origin]'")


def test_sampler_from_import_path_builds_and_checks_the_sampler() -> None:
    sampler = sampler_from_import_path("cirq:DensityMatrixSimulator", seed=3)
    assert isinstance(sampler, cirq.DensityMatrixSimulator)
    q = cirq.LineQubit(0)
    result = sampler.run(cirq.Circuit(cirq.X(q), cirq.measure(q, key="m")), repetitions=3)
    assert result.measurements["m"].tolist() == [[1]] * 3


class VendorStyleService:
    """Shaped like cirq-ionq's Service: built from credentials, hands out samplers per target."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def sampler(self, target: str) -> cirq.Sampler:
        assert self.api_key == "k" and target == "simulator"
        return cirq.Simulator(seed=1)


def test_a_service_path_yields_its_sampler() -> None:
    sampler = sampler_from_import_path(
        f"{__name__}:VendorStyleService", api_key="k", sampler_options={"target": "simulator"}
    )
    assert isinstance(sampler, cirq.Simulator)


@pytest.mark.parametrize(
    ("path", "options", "error", "message"),
    [
        ("cirq_google_missing_pkg:get_engine_sampler", {}, ImportError, "cannot import"),
        ("cirq:NoSuchSampler", {}, AttributeError, "has no attribute 'NoSuchSampler'"),
        ("cirq:LineQubit", {"x": 0}, TypeError, "produced a LineQubit, not a cirq.Sampler"),
        ("no-colon", {}, ValueError, "package.module:factory"),
    ],
)
def test_sampler_from_import_path_errors_teach(path: str, options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        sampler_from_import_path(path, **options)


def test_missing_vendor_sdk_names_the_extra() -> None:
    if importlib.util.find_spec("cirq_ionq") is not None:
        pytest.skip("cirq_ionq is installed here, so the missing-extra message cannot be shown")
    with pytest.raises(ImportError, match=r"pip install 'qtha\[hardware\]'"):
        sampler_from_import_path("cirq_ionq:Service", api_key="x")


def _random_circuit(seed: int) -> cirq.Circuit:
    q = cirq.LineQubit.range(4)
    rng = np.random.default_rng(seed)
    ops = []
    for layer in range(3):
        ops += [cirq.ry(rng.uniform(-3, 3)).on(x) for x in q]
        ops += [cirq.rz(rng.uniform(-3, 3)).controlled().on(q[i], q[(i + 1 + layer) % 4]) for i in range(4)]
        ops += [cirq.rx(rng.uniform(-3, 3)).on(q[layer]), cirq.CNOT(q[3], q[layer]), cirq.H(q[2])]
    return cirq.Circuit(ops)


@needs_pyqpanda3
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_origin_translation_matches_qsim_state_vector(seed: int) -> None:
    """The OpenQASM 2 program on pyqpanda3's CPUQVM reproduces qsim's final state (up to global phase)."""
    from quantum.backends.origin import local_state_vector

    circuit = _random_circuit(seed)
    expected = (
        qsimcirq.QSimSimulator()
        .simulate(circuit, qubit_order=sorted(circuit.all_qubits()))
        .final_state_vector
    )
    actual = local_state_vector(circuit)
    overlap = abs(np.vdot(expected, actual))
    assert overlap == pytest.approx(1.0, abs=1e-5)


@needs_pyqpanda3
def test_origin_counts_keep_keys_and_bit_order() -> None:
    from quantum.backends.origin import OriginLocalSampler

    q = cirq.LineQubit.range(4)
    circuit = cirq.Circuit(
        cirq.X(q[0]), cirq.X(q[3]), cirq.measure(q[3], q[1], key="a"), cirq.measure(q[0], q[2], key="b")
    )
    (result,) = OriginLocalSampler().run_sweep(circuit, None, repetitions=7)
    assert result.measurements["a"].tolist() == [[1, 0]] * 7
    assert result.measurements["b"].tolist() == [[1, 0]] * 7


@needs_pyqpanda3
def test_origin_local_sampler_distribution_matches_qsim() -> None:
    """Sampled counts of a translated parameterised circuit agree with qsim's exact probabilities (χ², seeded)."""
    from scipy import stats

    from quantum.backends.origin import OriginLocalSampler

    q = cirq.LineQubit.range(3)
    t = sympy.Symbol("t")
    circuit = cirq.Circuit(
        cirq.ry(t).on_each(*q),
        cirq.CNOT(q[0], q[1]),
        cirq.rz(0.5).controlled().on(q[1], q[2]),
        cirq.H(q[2]),
        cirq.measure(*q, key="m"),
    )
    shots = 8000
    (result,) = OriginLocalSampler().run_sweep(circuit, {"t": 0.9}, repetitions=shots)
    psi = qsimcirq.QSimSimulator().simulate(cirq.resolve_parameters(circuit[:-1], {"t": 0.9}), qubit_order=q)
    probs = np.abs(psi.final_state_vector.astype(np.complex128)) ** 2
    counts = np.bincount(result.measurements["m"] @ np.array([4, 2, 1]), minlength=8)
    # CPUQVM takes no seed; with 8000 shots a correct translation fails this only once in 10^6 runs.
    assert stats.chisquare(counts, probs / probs.sum() * shots).pvalue > 1e-6


@needs_pyqpanda3
def test_origin_qcloud_backend_drives_the_executor() -> None:
    from quantum.backends.origin import OriginQCloudBackend

    local = LocalQCloudBackend()
    backend = OriginQCloudBackend(qcloud_backend=local, max_programs_per_job=3)
    q = cirq.LineQubit.range(3)
    b = sympy.symbols("b0:3")
    circuit = cirq.Circuit([cirq.X(x) ** s for x, s in zip(q, b, strict=True)], cirq.measure(*q, key="m"))
    programs = [Program(circuit, {f"b{k}": (i >> (2 - k)) & 1 for k in range(3)}, 5) for i in range(8)]
    job = backend.submit(programs[:1], client_token="t")
    assert backend.submit(programs[:1], client_token="t") == job
    assert [backend.status(job).state for _ in range(3)] == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
    executor = Executor(backend, ExecutorConfig(poll_initial_s=0.0, poll_max_s=0.0, max_in_flight=2))
    results = executor.run(programs)
    assert [int("".join(map(str, r.bits("m")[0])), 2) for r in results] == list(range(8))
    assert executor.stats().jobs_completed == 3
    # Every batch asked QCloud for the QPU path explicitly (without options it takes the noise-model entry point).
    assert len(local.options) == 4 and all(type(o).__name__ == "QCloudOptions" for o in local.options)
    assert local.options[0].is_mapping() and local.options[0].is_optimization()
    with pytest.raises(Exception, match="one shot count"):
        backend.submit([programs[0], Program(circuit, programs[1].params, 6)], client_token="mixed")


def test_sampler_job_backend_reports_failures_by_kind() -> None:
    backend = SamplerJobBackend(cirq.Simulator(), max_workers=1)
    bad = Program(
        cirq.Circuit(cirq.X(cirq.LineQubit(0)) ** sympy.Symbol("missing"), cirq.measure(cirq.LineQubit(0))),
        {},
        1,
    )
    job = backend.submit([bad], client_token="x")
    backend._jobs[job][0].exception()  # noqa: SLF001 - wait for the worker to finish
    status = backend.status(job)
    assert status.state is JobState.FAILED and status.error_kind == "ValueError"
    backend.close()


def test_backends_from_plain_configuration() -> None:
    from quantum import DeviceEmulator, EmulatorConfig, ExecutorBackend, executor_backend, job_backend
    from quantum.emulator import DeviceSpec

    emulated = job_backend("emulator", emulator=EmulatorConfig(device=DeviceSpec(name="g", rows=2, cols=2)))
    assert isinstance(emulated, DeviceEmulator) and emulated.config.device.n_qubits == 4
    qnn_backend = executor_backend(emulated, shots=123)
    assert isinstance(qnn_backend, ExecutorBackend) and qnn_backend.repetitions == 123
    assert qnn_backend.confusions_for == emulated.calibration.confusion_matrices  # readout mitigation on
    sampled = job_backend("sampler", sampler="cirq:Simulator", sampler_options={"seed": 1})
    assert isinstance(sampled, SamplerJobBackend) and isinstance(sampled.sampler, cirq.Simulator)
    assert executor_backend(sampled).confusions_for is None  # no calibration to mitigate with
    sampled.close()
    with pytest.raises(ValueError, match="needs sampler='module:factory'"):
        job_backend("sampler")
    with pytest.raises(ValueError, match="needs origin=OriginOptions"):
        job_backend("origin")
    with pytest.raises(ValueError, match="unknown hardware kind"):
        job_backend("ibm")  # type: ignore[arg-type]
