"""Hardware from configuration: each option of ``HardwareOptions`` through the emulator and through Origin's local
simulator (pyqpanda3's CPUQVM behind the QCloud adapter), the per-cycle spend limit under injected failures, the
API key kept out of every message, and each branch of the offline policy."""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import traceback
from collections.abc import Sequence
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantum import (
    CircuitSpec,
    DeviceOfflineError,
    DevicePricing,
    HardwareOptions,
    JobState,
    OriginOptions,
    OriginQCloudBackend,
    Program,
    ProgramResult,
    QsimBackend,
    SimulatedDeviceClock,
    SpendLimit,
    SpendLimitError,
    TransientBackendError,
    build_circuit,
    device_backend,
    make_qnn,
)
from quantum.emulator import (
    Calibration,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
)
from quantum.executor import ExecutorConfig
from quantum.qpu import JobStatus
from tests.support.tools import needs_tool

HAVE_PYQPANDA3 = importlib.util.find_spec("pyqpanda3") is not None
needs_pyqpanda3 = needs_tool("pyqpanda3", available=HAVE_PYQPANDA3, how="pip install -e '.[origin]'")

GRID = DeviceSpec(name="grid-2x2", rows=2, cols=2)
SPEC = CircuitSpec(n_qubits=2, n_layers=1, encoding="none", readout="probs")
QC = build_circuit(SPEC)
WEIGHTS = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, SPEC.n_weights), jnp.float32)
COTANGENT = jnp.array([0.5, -1.0, 0.25, 1.0])
# Circuits of one gradient of one example: forward + 4 RY (2 shifts each) + 4 CRZ (4 each); SPSA: forward + 2/sample.
PARAMETER_SHIFT_PROGRAMS = 1 + 4 * 2 + 4 * 4


def _emulator_options(**changes) -> HardwareOptions:
    base = HardwareOptions(
        kind="emulator",
        shots=2000,
        emulator=EmulatorConfig(device=GRID, latency=LatencyModel(queue_s=1.0, queue_jitter_s=0.0)),
        calibration=Calibration.ideal(GRID),
        seed=3,
    )
    return replace(base, **changes)


def _origin_options(**changes) -> HardwareOptions:
    return replace(HardwareOptions(kind="origin", shots=2000, seed=3), **changes)


def _origin_device(local=None, **kwargs) -> OriginQCloudBackend:
    from tests.quantum.local_qcloud import LocalQCloudBackend

    return OriginQCloudBackend(qcloud_backend=local or LocalQCloudBackend(), **kwargs)


def _setup(where: str, clock: SimulatedDeviceClock, **changes):
    if where == "emulator":
        return device_backend(_emulator_options(**changes), clock=clock, client_id="cfg")
    options = _origin_options(**changes)
    device = _origin_device(pricing=options.pricing)
    return device_backend(options, clock=clock, device=device, client_id="cfg")


def _gradient(setup) -> np.ndarray:
    qnn = make_qnn(QC, backend=setup.backend, gradient=setup.gradient)
    return np.asarray(jax.grad(lambda w: jnp.sum(qnn(jnp.zeros((1, 0)), w)[0] * COTANGENT))(WEIGHTS))


def _exact_gradient() -> np.ndarray:
    qnn = make_qnn(SPEC)
    return np.asarray(jax.grad(lambda w: jnp.sum(qnn(jnp.zeros((1, 0)), w)[0] * COTANGENT))(WEIGHTS))


WHERE = ["emulator", pytest.param("origin", marks=needs_pyqpanda3)]


@pytest.mark.parametrize("where", WHERE)
def test_parameter_shift_option_gives_the_exact_gradient_within_shot_noise(where: str) -> None:
    clock = SimulatedDeviceClock()
    setup = _setup(where, clock, gradient="parameter-shift")
    grad = _gradient(setup)
    stats = setup.executor.stats()
    assert stats.programs == PARAMETER_SHIFT_PROGRAMS and stats.shots == PARAMETER_SHIFT_PROGRAMS * 2000
    # Each entry sums at most 4 shifted probability estimates of 2000 shots, weighted by |c| <= 1: sd < 0.06.
    np.testing.assert_allclose(grad, _exact_gradient(), atol=0.2)


@pytest.mark.parametrize("where", WHERE)
def test_spsa_option_costs_two_circuits_per_sample_whatever_the_weights(where: str) -> None:
    clock = SimulatedDeviceClock()
    setup = _setup(where, clock, gradient="spsa", spsa_samples=3, spsa_epsilon=0.1)
    grad = _gradient(setup)
    assert setup.executor.stats().programs == 1 + 2 * 3
    # An SPSA estimate is an unbiased, noisy gradient: it must point downhill on average, here positively correlated.
    assert float(np.dot(grad, _exact_gradient())) > 0


@pytest.mark.parametrize("where", WHERE)
def test_shots_and_prices_reach_the_executor_and_the_bill(where: str) -> None:
    clock = SimulatedDeviceClock()
    pricing = DevicePricing(per_job=1.0, per_shot=0.001)
    changes = {"shots": 150, "spend_limit": SpendLimit(max_cost=1000.0)}
    if where == "emulator":
        options = _emulator_options(**changes)
        setup = device_backend(replace(options, emulator=replace(options.emulator, pricing=pricing)), clock=clock)
    else:
        setup = _setup(where, clock, pricing=pricing, **changes)
    values = np.zeros((5, len(QC.symbols)))
    setup.backend.evaluate(QC, values)
    stats = setup.executor.stats()
    assert (stats.programs, stats.shots, stats.jobs_completed) == (5, 750, 1)
    assert stats.cost == pytest.approx(1.0 + 0.001 * 750)
    if where == "emulator":
        assert setup.device.billing().shots == 750 and setup.device.billing().cost == pytest.approx(stats.cost)


def test_calibration_and_latency_from_their_files_drive_the_emulator() -> None:
    calibration_text = Calibration.synthetic(GRID, seed=4).to_json()
    latency_text = json.dumps({"queue_s": 40.0, "queue_jitter_s": 0.0, "per_shot_s": 0.001})
    options = _emulator_options(
        calibration=Calibration.from_json(calibration_text),
        emulator=EmulatorConfig(device=GRID, latency=LatencyModel.from_json(latency_text)),
        shots=1000,
    )
    clock = SimulatedDeviceClock()
    setup = device_backend(options, clock=clock)
    assert setup.device.calibration == Calibration.from_json(calibration_text)
    # Readout mitigation inverts exactly this snapshot's confusion matrices.
    assert setup.backend.device.confusions_for == setup.device.calibration.confusion_matrices
    setup.backend.evaluate(QC, np.zeros((1, len(QC.symbols))))
    assert clock.now() >= 40.0 + 1000 * 0.001  # the queue and the per-shot run time of the file, on the clock
    with pytest.raises(ValueError, match=r"unknown fields \['queue'\]"):
        LatencyModel.from_json('{"queue": 1}')
    with pytest.raises(ValueError, match="finite and >= 0"):
        LatencyModel.from_json('{"per_shot_s": -1}')


class _CapWitness:
    """A JobBackend in front of another that checks, at every submission, that the shots and money of completed
    plus accepted-and-unfinished jobs plus the new one stay within the cap: what a hard cap must guarantee."""

    def __init__(self, inner: DeviceEmulator, cap: SpendLimit) -> None:
        self.inner, self.cap = inner, cap
        self.open: dict[str, tuple[int, float]] = {}
        self.breaches: list[str] = []
        self.submitted = 0
        self._lock = threading.Lock()

    @property
    def max_programs_per_job(self) -> int:
        return self.inner.max_programs_per_job

    def estimate_cost(self, programs: Sequence[Program]) -> float:
        return self.inner.estimate_cost(programs)

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        shots, cost = sum(p.repetitions for p in programs), self.inner.estimate_cost(programs)
        with self._lock:
            bill = self.inner.billing()
            held_shots = bill.shots + sum(s for s, _ in self.open.values()) + shots
            held_cost = bill.cost + sum(c for _, c in self.open.values()) + cost
            if self.cap.max_shots is not None and held_shots > self.cap.max_shots:
                self.breaches.append(f"{held_shots} shots")
            if self.cap.max_cost is not None and held_cost > self.cap.max_cost + 1e-9:
                self.breaches.append(f"{held_cost} cost")
        job = self.inner.submit(programs, client_token=client_token)
        with self._lock:
            self.open[job] = (shots, cost)
            self.submitted += 1
        return job

    def status(self, job_id: str) -> JobStatus:
        status = self.inner.status(job_id)
        if status.state.terminal:
            with self._lock:
                self.open.pop(job_id, None)
        return status

    def results(self, job_id: str) -> list[ProgramResult]:
        results = self.inner.results(job_id)  # billed now; forget it only after the bill has it
        with self._lock:
            self.open.pop(job_id, None)
        return results

    def cancel(self, job_id: str) -> None:
        self.inner.cancel(job_id)


@pytest.mark.parametrize("seed", [0, 1, 3])  # seeds whose runs do draw failures (asserted below)
@pytest.mark.parametrize("cap", [SpendLimit(max_shots=2500), SpendLimit(max_cost=8.0)], ids=["shots", "money"])
def test_spend_limit_holds_under_30_percent_injected_failures(seed: int, cap: SpendLimit) -> None:
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(
        EmulatorConfig(
            device=GRID,
            seed=seed,
            failures=FailureModel.transient(0.3, offline_s=5.0),
            pricing=DevicePricing(per_job=0.5, per_shot=0.001),
        ),
        calibration=Calibration.ideal(GRID),
        clock=clock,
    )
    witness = _CapWitness(emulator, cap)
    options = _emulator_options(shots=100, spend_limit=cap, seed=seed, executor=ExecutorConfig(batch_size=2, max_in_flight=2))
    setup = device_backend(options, clock=clock, device=witness, client_id=f"cap-{seed}")
    with pytest.raises(SpendLimitError, match="exceeds the remaining spend limit"):
        setup.backend.evaluate(QC, np.zeros((60, len(QC.symbols))))  # 30 jobs of 200 shots: far over the cap
    stats, bill = setup.executor.stats(), emulator.billing()
    assert sum(stats.errors.values()) > 0, "the failure model injected nothing"
    assert witness.submitted > 0 and witness.breaches == []
    assert bill.shots == stats.shots and bill.cost == pytest.approx(stats.cost)
    assert cap.max_shots is None or bill.shots <= cap.max_shots
    assert cap.max_cost is None or bill.cost <= cap.max_cost + 1e-9
    assert isinstance(setup.backend.error, SpendLimitError)


def test_a_job_over_the_limit_is_refused_before_it_reaches_the_device() -> None:
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(EmulatorConfig(device=GRID), calibration=Calibration.ideal(GRID), clock=clock)
    witness = _CapWitness(emulator, SpendLimit(max_shots=99))
    setup = device_backend(_emulator_options(shots=100, spend_limit=SpendLimit(max_shots=99)), device=witness)
    with pytest.raises(SpendLimitError, match=r"100 shots.*99 shots"):
        setup.backend.evaluate(QC, np.zeros((1, len(QC.symbols))))
    assert witness.submitted == 0 and emulator.billing().jobs == 0


class _OfflineUntil:
    """The emulator, refusing every submission as offline until the clock reads ``until``."""

    def __init__(self, inner: DeviceEmulator, clock: SimulatedDeviceClock, until: float) -> None:
        self.inner, self.clock, self.until = inner, clock, until

    def __getattr__(self, name: str):  # status, results, cancel, caps and prices: the emulator's
        return getattr(self.inner, name)

    @property
    def max_programs_per_job(self) -> int:
        return self.inner.max_programs_per_job

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        if self.clock.now() < self.until:
            raise TransientBackendError("device_offline", "chip under calibration", retry_after_s=30.0)
        return self.inner.submit(programs, client_token=client_token)


def _offline_setup(policy: str, until: float, **changes):
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(EmulatorConfig(device=GRID, seed=1), calibration=Calibration.ideal(GRID), clock=clock)
    options = _emulator_options(offline=policy, offline_timeout_s=60.0, offline_wait_s=900.0, shots=500, **changes)
    return clock, device_backend(options, clock=clock, device=_OfflineUntil(emulator, clock, until))


def test_offline_policy_fail_raises_after_the_timeout_and_records_it() -> None:
    clock, setup = _offline_setup("fail", until=float("inf"))
    with pytest.raises(DeviceOfflineError, match="fall back to a simulator"):
        setup.backend.evaluate(QC, np.zeros((2, len(QC.symbols))))
    outcome = setup.backend.outcome
    assert (outcome.policy, outcome.action, outcome.device_programs) == ("fail", "failed", 0)
    assert 60.0 < clock.now() < 900.0
    assert outcome.as_dict()["reason"] == str(setup.backend.error)


def test_offline_policy_fallback_switches_to_qsim_for_the_rest_of_the_cycle() -> None:
    clock, setup = _offline_setup("fallback", until=float("inf"))
    values = np.random.default_rng(2).uniform(-1, 1, (3, len(QC.symbols)))
    got = setup.backend.evaluate(QC, values)
    np.testing.assert_allclose(got, QsimBackend().evaluate(QC, values), atol=1e-6)
    assert setup.backend.outcome.action == "fell_back" and setup.backend.outcome.policy == "fallback"
    attempts = dict(setup.executor.stats().errors)
    setup.backend.evaluate(QC, values)  # stays on the simulator: the offline device is not probed again
    assert dict(setup.executor.stats().errors) == attempts and setup.backend.fallback_rows == 6
    assert setup.backend.error is None


def test_offline_policy_wait_rides_out_an_outage_shorter_than_its_wait() -> None:
    clock, setup = _offline_setup("wait", until=500.0)
    setup.backend.evaluate(QC, np.zeros((2, len(QC.symbols))))  # "fail" would have given up after 60 s
    stats = setup.executor.stats()
    assert setup.backend.outcome is None and stats.programs == 2 and stats.errors["device_offline"] > 3
    assert clock.now() >= 500.0


def test_offline_policy_wait_fails_when_the_outage_outlasts_the_wait() -> None:
    clock, setup = _offline_setup("wait", until=float("inf"))
    with pytest.raises(DeviceOfflineError):
        setup.backend.evaluate(QC, np.zeros((1, len(QC.symbols))))
    assert setup.backend.outcome.action == "failed" and setup.backend.outcome.policy == "wait"
    assert clock.now() > 900.0


@needs_pyqpanda3
def test_origin_reports_a_chip_in_maintenance_as_offline_and_the_policy_falls_back() -> None:
    from tests.quantum.local_qcloud import LocalQCloudBackend

    local = LocalQCloudBackend(refuse_with="chip WK_C72 is under maintenance until 08:00")
    clock = SimulatedDeviceClock()
    options = _origin_options(offline="fallback", offline_timeout_s=60.0, shots=100)
    setup = device_backend(options, clock=clock, device=_origin_device(local))
    values = np.zeros((1, len(QC.symbols)))
    np.testing.assert_allclose(setup.backend.evaluate(QC, values), QsimBackend().evaluate(QC, values), atol=1e-6)
    assert setup.executor.stats().errors.get("device_offline", 0) > 0
    assert "maintenance" in setup.backend.outcome.reason


SECRET = "sk-9f8e7d6c5b4a-SECRET"


def test_the_origin_api_key_never_reaches_a_message_a_log_or_a_repr(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def refusing_connect(api_key: str, backend_name: str):
        raise RuntimeError(f"401: api key {api_key} is not valid for {backend_name}")

    with pytest.raises(ConnectionError) as caught:
        OriginQCloudBackend(api_key=SECRET, backend_name="WK_C72", connect=refusing_connect)
    text = "".join(traceback.format_exception(caught.value))
    assert "WK_C72" in text and "<api key>" in text and SECRET not in text
    logging.getLogger("qtha.test").error("connect failed", exc_info=caught.value)  # as a daemon would log it
    assert SECRET not in caplog.text

    options = OriginOptions(backend_name="WK_C72", api_key=SECRET)
    assert SECRET not in repr(options) and SECRET not in repr(_origin_options(origin=options))


@needs_pyqpanda3
def test_sdk_errors_are_scrubbed_of_the_key_before_they_become_backend_errors() -> None:
    from tests.quantum.local_qcloud import LocalQCloudBackend

    local = LocalQCloudBackend(refuse_with=f"server error 502 (token {SECRET})")
    backend = OriginQCloudBackend(api_key=SECRET, backend_name="WK_C72", connect=lambda key, name: local)
    program = Program(build_circuit(SPEC).circuit, {s.name: 0.0 for s in QC.symbols}, 10)
    with pytest.raises(TransientBackendError) as caught:
        backend.submit([Program(_measured(program.circuit), program.params, 10)], client_token="t")
    assert caught.value.kind == "server_error" and SECRET not in "".join(traceback.format_exception(caught.value))


def _measured(circuit):
    import cirq

    return circuit + cirq.measure(*sorted(circuit.all_qubits()), key="m")


def test_origin_counts_given_as_probabilities_become_exactly_shots_rows() -> None:
    import cirq

    from quantum.backends.origin import counts_to_result, translate

    q = cirq.LineQubit.range(2)
    translated = translate(cirq.Circuit(cirq.measure(*q, key="m")))
    result = counts_to_result({"00": 0.5, "01": 0.3, "11": 0.2}, translated, cirq.ParamResolver(), shots=7)
    bits = result.measurements["m"]
    assert len(bits) == 7
    # Largest remainder: 3.5 -> 4 (ties to the larger remainder first), 2.1 -> 2, 1.4 -> 1.
    assert sorted(map(tuple, bits.tolist())).count((0, 0)) in (3, 4) and len({tuple(b) for b in bits}) == 3
    assert JobState.DONE.terminal
