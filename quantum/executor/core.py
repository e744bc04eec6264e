"""The Executor: batches programs under the vendor cap, keeps a bounded number of jobs in flight, polls with
back-off, retries transient failures idempotently and returns every program's result exactly once.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np

from quantum.executor.stats import ExecutionStats, SpendLimit, StatsRecorder
from quantum.qpu.clock import DeviceClock, RealDeviceClock
from quantum.qpu.errors import (
    DeviceOfflineError,
    JobFailedError,
    RetriesExhaustedError,
    SpendLimitError,
    TransientBackendError,
)
from quantum.qpu.protocol import JobBackend, JobState, Program, ProgramResult

RETRYABLE_JOB_FAILURES = frozenset({"server_error", "timeout", "rate_limit", "device_offline"})


@dataclass(frozen=True)
class ExecutorConfig:
    """How the executor talks to a backend.

    Attributes:
        max_in_flight: jobs submitted and not yet collected, at most.
        batch_size: programs per job; ``None`` uses the backend's cap.
        poll_initial_s: first wait before polling a job.
        poll_max_s: longest wait between polls (waits grow by ``poll_factor``).
        poll_factor: growth of the poll interval.
        backoff_initial_s: first wait after a transient error (doubles per attempt, with seeded jitter).
        backoff_max_s: longest wait after a transient error.
        job_timeout_s: a job not finished this long after submission is cancelled and resubmitted.
        offline_timeout_s: if the device refuses work as offline this long without a success in between,
            :class:`DeviceOfflineError` is raised so the caller can fall back to a simulator.
        max_attempts: submissions per batch before :class:`RetriesExhaustedError`.
        spend_limit: shot and cost limits over the executor's lifetime.
        seed: seeds the back-off jitter.
    """

    max_in_flight: int = 8
    batch_size: int | None = None
    poll_initial_s: float = 0.5
    poll_max_s: float = 10.0
    poll_factor: float = 1.5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    job_timeout_s: float = 900.0
    offline_timeout_s: float = 300.0
    max_attempts: int = 12
    spend_limit: SpendLimit = field(default_factory=SpendLimit)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


class _Stop(Exception):
    """Internal: another batch failed, so this one stops submitting."""


class Executor:
    """Runs many programs on a :class:`JobBackend` robustly.

    Example:
        >>> executor = Executor(DeviceEmulator(config, clock=clock), clock=clock)  # doctest: +SKIP
        >>> results = executor.run([Program(circuit, {"t": 0.1}, 1000) for _ in range(500)])  # doctest: +SKIP
        >>> executor.stats().shots  # doctest: +SKIP
        500000
    """

    def __init__(
        self,
        backend: JobBackend,
        config: ExecutorConfig | None = None,
        *,
        clock: DeviceClock | None = None,
        client_id: str | None = None,
    ) -> None:
        """Create an executor.

        Args:
            backend: where jobs go (the emulator, a vendor adapter, a wrapped cirq.Sampler).
            config: batching, concurrency, polling, retries, spend limit.
            clock: time source and sleeper (a SimulatedDeviceClock in tests).
            client_id: prefix of the idempotency tokens; must differ between executors sharing a backend
                (a random one by default; tests pass a fixed one to make seeded failures reproducible).
        """
        self.client_id = client_id or uuid.uuid4().hex
        self.backend = backend
        self.config = config or ExecutorConfig()
        self._clock = clock or RealDeviceClock()
        self._recorder = StatsRecorder(self.config.spend_limit)
        self._runs = itertools.count()
        self._offline_lock = threading.Lock()
        self._offline_since: float | None = None

    def stats(self) -> ExecutionStats:
        """Counters since creation: programs, jobs, retries, errors by kind, shots, cost."""
        return self._recorder.snapshot()

    def run(self, programs: Sequence[Program]) -> list[ProgramResult]:
        """Run ``programs`` and return their results in the same order, each exactly once.

        Raises:
            SpendLimitError: the next job would exceed the spend limit (nothing over it was submitted).
            DeviceOfflineError: the device stayed offline longer than ``offline_timeout_s``.
            RetriesExhaustedError: a batch kept failing transiently.
            DeviceValidationError / JobTooLargeError / JobFailedError: a permanent problem with a program.
        """
        programs = list(programs)
        if not programs:
            return []
        started = self._clock.now()
        size = min(
            self.config.batch_size or self.backend.max_programs_per_job, self.backend.max_programs_per_job
        )
        batches = [list(range(i, min(i + size, len(programs)))) for i in range(0, len(programs), size)]
        run_id = next(self._runs)
        stop = threading.Event()
        slots: list[ProgramResult | None] = [None] * len(programs)
        try:
            with ThreadPoolExecutor(
                max_workers=self.config.max_in_flight, thread_name_prefix="qtha-exec"
            ) as pool:
                futures = {
                    pool.submit(
                        self._run_batch,
                        [programs[i] for i in batch],
                        f"{self.client_id}-r{run_id}-b{k}",
                        stop,
                    ): batch
                    for k, batch in enumerate(batches)
                }
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [
                    f for f in done if f.exception() is not None and not isinstance(f.exception(), _Stop)
                ]
                if failed:
                    stop.set()  # the other workers cancel their jobs and return
                    wait(futures)
                    raise failed[0].exception()  # type: ignore[misc]
                for future, batch in futures.items():
                    results = future.result()
                    for index, result in zip(batch, results, strict=True):
                        if slots[index] is not None:
                            raise AssertionError(f"program {index} received two results")  # invariant
                        slots[index] = result
        finally:
            self._recorder.add(busy_s=self._clock.now() - started)
        missing = [i for i, s in enumerate(slots) if s is None]
        if missing:
            raise AssertionError(f"programs {missing[:5]} received no result")  # invariant
        self._recorder.add(programs=len(programs))
        return slots  # type: ignore[return-value]

    # --- one batch --------------------------------------------------------------------------------------------

    def _backoff(self, token: str, attempt: int, retry_after: float | None) -> float:
        base = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2.0 ** max(attempt - 1, 0))
        jitter = np.random.default_rng([self.config.seed, zlib.crc32(token.encode())]).uniform(0.5, 1.0)
        return max(retry_after or 0.0, base * jitter)

    def _note_offline(self, offline: bool, said: str = "") -> None:
        now = self._clock.now()
        with self._offline_lock:
            if not offline:
                self._offline_since = None
                return
            if self._offline_since is None:
                self._offline_since = now
            elif now - self._offline_since > self.config.offline_timeout_s:
                raise DeviceOfflineError(
                    f"the device has refused work as offline for {now - self._offline_since:.0f} s "
                    f"(offline_timeout_s={self.config.offline_timeout_s:.0f}; it last said: {said}); fall back to "
                    "a simulator backend"
                )

    def _run_batch(
        self, programs: list[Program], batch_token: str, stop: threading.Event
    ) -> list[ProgramResult]:
        shots = sum(p.repetitions for p in programs)
        cost = self.backend.estimate_cost(programs)
        for attempt in range(1, self.config.max_attempts + 1):
            if stop.is_set():
                raise _Stop()
            token = f"{batch_token}-a{attempt}"
            if attempt > 1:
                self._recorder.add(retries=1)
            if not self._recorder.reserve(shots, cost):
                raise SpendLimitError(
                    f"a job of {len(programs)} programs ({shots} shots, cost {cost:.4f}) exceeds the remaining "
                    f"spend limit ({self._recorder.remaining()}); raise the limit or fall back to a simulator"
                )
            completed = False
            try:
                try:
                    job_id = self.backend.submit(programs, client_token=token)
                except TransientBackendError as err:
                    self._recorder.error(err.kind)
                    self._note_offline(err.kind == "device_offline", str(err))
                    self._clock.sleep(self._backoff(token, attempt, err.retry_after_s))
                    continue
                self._note_offline(False)
                self._recorder.add(jobs_submitted=1)
                results = self._await(job_id, len(programs), token, stop)
                if results is None:
                    self._clock.sleep(self._backoff(token, attempt, None))
                    continue
                completed = True
                return results
            finally:
                self._recorder.release(shots, cost, spent=completed)
        raise RetriesExhaustedError(
            f"batch {batch_token} of {len(programs)} programs failed {self.config.max_attempts} times; see "
            f"stats().errors ({dict(self._recorder.snapshot().errors)}) and retry later or raise max_attempts"
        )

    def _await(
        self, job_id: str, n_programs: int, token: str, stop: threading.Event
    ) -> list[ProgramResult] | None:
        """Poll a job until it finishes; its results, or None when it should be resubmitted."""
        submitted = self._clock.now()
        interval = self.config.poll_initial_s
        while True:
            if stop.is_set():
                self.backend.cancel(job_id)
                raise _Stop()
            self._clock.sleep(interval)
            interval = min(self.config.poll_max_s, interval * self.config.poll_factor)
            try:
                status = self.backend.status(job_id)
            except TransientBackendError as err:
                self._recorder.error(err.kind)
                continue
            if status.state is JobState.DONE:
                try:
                    results = self.backend.results(job_id)
                except TransientBackendError as err:  # the job is done; only the download failed
                    self._recorder.error(err.kind)
                    continue
                if len(results) != n_programs:
                    raise JobFailedError(
                        f"job {job_id} returned {len(results)} results for {n_programs} programs"
                    )
                self._recorder.add(jobs_completed=1)
                return results
            if status.state in (JobState.FAILED, JobState.CANCELLED):
                kind = status.error_kind or status.state.value
                self._recorder.add(jobs_failed=1)
                self._recorder.error(kind)
                if status.state is JobState.FAILED and kind not in RETRYABLE_JOB_FAILURES:
                    raise JobFailedError(f"job {job_id} failed permanently ({kind}): {status.message}")
                return None
            if self._clock.now() - submitted > self.config.job_timeout_s:
                self.backend.cancel(job_id)
                self._recorder.add(jobs_timed_out=1)
                self._recorder.error("timeout")
                return None
