"""The executor: batching under the cap, bounded concurrency, idempotent retries, spend limit, offline device."""

from __future__ import annotations

import threading

import cirq
import numpy as np
import pytest
import sympy

from quantum.emulator import (
    Calibration,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
)
from quantum.executor import Executor, ExecutorConfig, ExecutorSampler, SamplerJobBackend, SpendLimit
from quantum.qpu import (
    DeviceOfflineError,
    DeviceValidationError,
    Program,
    RetriesExhaustedError,
    SimulatedDeviceClock,
    SpendLimitError,
    TransientBackendError,
)

GRID = DeviceSpec(name="grid-3x4", rows=3, cols=4)
N_BITS = 10


def index_programs(n: int, repetitions: int = 1) -> list[Program]:
    """Program i prepares |i⟩ on 10 qubits: on a noiseless device its bits spell its own index."""
    qubits = cirq.LineQubit.range(N_BITS)
    bits = sympy.symbols(f"b0:{N_BITS}")
    circuit = cirq.Circuit(
        [cirq.X(q) ** b for q, b in zip(qubits, bits, strict=True)], cirq.measure(*qubits, key="m")
    )
    return [
        Program(circuit, {f"b{k}": (i >> (N_BITS - 1 - k)) & 1 for k in range(N_BITS)}, repetitions)
        for i in range(n)
    ]


def decoded(result) -> set[int]:
    return {int("".join(map(str, row)), 2) for row in result.bits("m")}


class Recording:
    """Wraps a backend and records job sizes and the largest number of jobs in flight."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.sizes: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._open: set[str] = set()
        self._lock = threading.Lock()

    max_programs_per_job = property(lambda self: self.backend.max_programs_per_job)

    def estimate_cost(self, programs):
        return self.backend.estimate_cost(programs)

    def submit(self, programs, *, client_token):
        job = self.backend.submit(programs, client_token=client_token)
        with self._lock:
            self.sizes.append(len(programs))
            self._open.add(job)
            self.max_in_flight = max(self.max_in_flight, len(self._open))
        return job

    def status(self, job_id):
        status = self.backend.status(job_id)
        if status.state.terminal and status.state.value != "done":  # the executor abandons failed jobs
            with self._lock:
                self._open.discard(job_id)
        return status

    def results(self, job_id):
        with self._lock:
            self._open.discard(job_id)
        return self.backend.results(job_id)

    def cancel(self, job_id):
        with self._lock:
            self._open.discard(job_id)
        self.backend.cancel(job_id)


def emulator(clock: SimulatedDeviceClock, **config) -> DeviceEmulator:
    return DeviceEmulator(
        EmulatorConfig(device=GRID, **config),
        calibration=Calibration.ideal(GRID),
        clock=clock,
        engine=lambda seed: cirq.Simulator(seed=seed),  # noiseless: a state vector suffices
    )


def test_thousand_programs_with_30_percent_transient_failures_complete_exactly_once() -> None:
    """Acceptance: every result once, in order, each program's own, despite 30 % injected failures."""
    clock = SimulatedDeviceClock()
    backend = Recording(emulator(clock, failures=FailureModel.transient(0.3), seed=3))
    executor = Executor(backend, ExecutorConfig(max_in_flight=8, batch_size=10), clock=clock, client_id="acc")
    results = executor.run(index_programs(1000))
    assert len(results) == 1000
    assert [decoded(r) for r in results] == [{i} for i in range(1000)]
    stats = executor.stats()
    print(f"stats: {stats}")
    assert stats.programs == 1000 and stats.jobs_completed == 100
    attempts = stats.jobs_submitted + stats.errors["rate_limit"] + stats.errors["device_offline"]
    assert 0.2 < stats.retries / attempts < 0.5  # ≈30 % of the attempts failed
    assert set(stats.errors) == {"rate_limit", "server_error", "device_offline"}
    assert stats.jobs_failed == stats.errors["server_error"]
    assert stats.shots == 1000 and backend.backend.billing().shots == 1000  # failed jobs are not charged
    assert max(backend.sizes) == 10
    assert backend.max_in_flight <= 8


def test_batches_respect_the_vendor_cap_and_the_in_flight_bound() -> None:
    clock = SimulatedDeviceClock()
    backend = Recording(emulator(clock, max_programs_per_job=200))
    executor = Executor(backend, ExecutorConfig(max_in_flight=2), clock=clock)
    results = executor.run(index_programs(450, repetitions=2))
    assert sorted(backend.sizes) == [50, 200, 200]
    assert backend.max_in_flight <= 2
    assert [decoded(r) for r in results] == [{i} for i in range(450)]


def test_spend_limit_is_reported_before_overspending() -> None:
    clock = SimulatedDeviceClock()
    backend = emulator(clock)
    cost = backend.estimate_cost(index_programs(10, repetitions=100))
    executor = Executor(
        backend,
        ExecutorConfig(batch_size=10, max_in_flight=1, spend_limit=SpendLimit(max_cost=2.5 * cost)),
        clock=clock,
    )
    executor.run(index_programs(20, repetitions=100))  # two jobs fit
    with pytest.raises(SpendLimitError, match="exceeds the remaining spend limit.*fall back to a simulator"):
        executor.run(index_programs(10, repetitions=100))
    assert executor.stats().cost == pytest.approx(2 * cost)
    assert backend.billing().cost == pytest.approx(2 * cost)


def test_a_dead_device_raises_device_offline() -> None:
    clock = SimulatedDeviceClock()
    backend = emulator(clock, failures=FailureModel(device_offline=1.0, offline_s=float("inf")))
    executor = Executor(backend, ExecutorConfig(offline_timeout_s=120.0, max_attempts=50), clock=clock)
    with pytest.raises(DeviceOfflineError, match="fall back to a simulator"):
        executor.run(index_programs(3))
    assert executor.stats().errors["device_offline"] >= 2
    assert executor.stats().jobs_submitted == 0


def test_permanent_errors_are_not_retried() -> None:
    clock = SimulatedDeviceClock()
    backend = Recording(emulator(clock))
    executor = Executor(backend, clock=clock)
    too_wide = cirq.Circuit(
        cirq.X.on_each(cirq.LineQubit.range(13)), cirq.measure(*cirq.LineQubit.range(13), key="m")
    )
    with pytest.raises(DeviceValidationError, match="13 qubits but device 'grid-3x4' has 12"):
        executor.run([Program(too_wide, {}, 1)])
    assert executor.stats().retries == 0


def test_persistent_server_errors_exhaust_the_retries() -> None:
    clock = SimulatedDeviceClock()
    executor = Executor(
        emulator(clock, failures=FailureModel(server_error=1.0)), ExecutorConfig(max_attempts=4), clock=clock
    )
    with pytest.raises(RetriesExhaustedError, match="failed 4 times"):
        executor.run(index_programs(2))
    assert executor.stats().errors == {"server_error": 4}
    assert executor.stats().retries == 3


def test_stuck_jobs_time_out_are_cancelled_and_resubmitted() -> None:
    clock = SimulatedDeviceClock()
    slow = LatencyModel(queue_s=1000.0, queue_jitter_s=0.0)
    backend = emulator(clock, latency=slow)
    executor = Executor(backend, ExecutorConfig(job_timeout_s=100.0, max_attempts=3), clock=clock)
    with pytest.raises(RetriesExhaustedError):
        executor.run(index_programs(1))
    assert executor.stats().jobs_timed_out == 3 and backend.billing().jobs == 0


def test_any_cirq_sampler_runs_through_the_executor() -> None:
    backend = SamplerJobBackend(cirq.Simulator(seed=1), max_programs_per_job=3, max_workers=2)
    sampler = ExecutorSampler(Executor(backend, ExecutorConfig(poll_initial_s=0.001, poll_max_s=0.01)))
    q = cirq.LineQubit.range(2)
    t = sympy.Symbol("t")
    circuits = [
        cirq.Circuit(cirq.X(q[0]) ** t, cirq.measure(*q, key="m")),
        cirq.Circuit(cirq.X(q[1]), cirq.measure(*q, key="m")),
    ]
    out = sampler.run_batch(circuits, [cirq.Points("t", [0, 1, 0, 1]), None], repetitions=4)
    assert [[r.measurements["m"][0].tolist() for r in group] for group in out] == [
        [[0, 0], [1, 0], [0, 0], [1, 0]],
        [[0, 1]],
    ]
    backend.close()


def test_backoff_sleeps_on_the_injected_clock() -> None:
    clock = SimulatedDeviceClock()
    backend = emulator(clock, failures=FailureModel(rate_limit=0.5), seed=1)
    executor = Executor(
        backend,
        ExecutorConfig(batch_size=1, max_in_flight=1, backoff_initial_s=7.0),
        clock=clock,
        client_id="b",
    )
    executor.run(index_programs(30))
    rate_limited = executor.stats().errors["rate_limit"]
    assert rate_limited > 5
    assert clock.slept >= rate_limited * 7.0 * 0.5  # each refusal waited ≥ half the initial back-off
    np.testing.assert_equal(executor.stats().programs, 30)


class FlakyDownloads(Recording):
    """Fails the first download of every job, as a dropped connection would."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.failed: set[str] = set()

    def results(self, job_id):
        if job_id not in self.failed:
            self.failed.add(job_id)
            raise TransientBackendError("server_error", "connection reset while downloading results")
        return super().results(job_id)


def test_a_failed_download_is_retried_without_resubmitting() -> None:
    clock = SimulatedDeviceClock()
    backend = FlakyDownloads(emulator(clock))
    executor = Executor(backend, ExecutorConfig(batch_size=5), clock=clock)
    results = executor.run(index_programs(12))
    assert [decoded(r) for r in results] == [{i} for i in range(12)]
    assert executor.stats().jobs_submitted == 3 and executor.stats().errors == {"server_error": 3}
