"""Bridges to cirq: any cirq.Sampler as a JobBackend, and an Executor as a cirq.Sampler."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import cirq

from quantum.executor.core import Executor
from quantum.qpu.errors import JobNotDoneError, TransientBackendError
from quantum.qpu.pricing import DevicePricing
from quantum.qpu.protocol import JobState, JobStatus, Program, ProgramResult


def _measured_qubits(circuit: cirq.AbstractCircuit) -> dict[str, tuple[cirq.Qid, ...]]:
    return {
        cirq.measurement_key_name(op): tuple(op.qubits)
        for op in circuit.all_operations()
        if cirq.is_measurement(op)
    }


class SamplerJobBackend:
    """Any ``cirq.Sampler`` (cirq-google's ProcessorSampler, cirq-ionq's Sampler, a simulator) as a JobBackend.

    Each job runs its programs through ``sampler.run_batch`` on a private thread pool, so a blocking vendor
    sampler still overlaps with other jobs. The vendor compiles and maps qubits itself, so ``physical_qubits``
    reports the circuit's own (logical) qubits.
    """

    def __init__(
        self,
        sampler: cirq.Sampler,
        *,
        max_programs_per_job: int = 200,
        max_workers: int = 8,
        pricing: DevicePricing | None = None,
    ) -> None:
        """Wrap ``sampler``.

        Args:
            sampler: what runs the circuits.
            max_programs_per_job: the vendor's batch cap.
            max_workers: sampler calls that may run at once.
            pricing: the vendor's prices, for spend limits (vendors do not report them through cirq); free by
                default.
        """
        self.sampler = sampler
        self._cap = max_programs_per_job
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="qtha-sampler")
        self.pricing = pricing or DevicePricing.free()
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[Future[list[ProgramResult]], tuple[Program, ...]]] = {}
        self._tokens: dict[str, str] = {}
        self._ids = itertools.count()

    @property
    def max_programs_per_job(self) -> int:
        """The batch cap."""
        return self._cap

    def estimate_cost(self, programs: Sequence[Program]) -> float:
        """The job's price under ``pricing``."""
        return self.pricing.job_cost(programs)

    def _execute(self, programs: tuple[Program, ...]) -> list[ProgramResult]:
        results = []
        for program in programs:
            (result,) = self.sampler.run_sweep(
                program.circuit, program.params, repetitions=program.repetitions
            )
            results.append(ProgramResult(result, _measured_qubits(program.circuit)))
        return results

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        """Start the programs on the pool; idempotent per ``client_token``."""
        programs = tuple(programs)
        with self._lock:
            if client_token in self._tokens:
                return self._tokens[client_token]
            job_id = f"sampler-job-{next(self._ids)}"
            self._jobs[job_id] = (self._pool.submit(self._execute, programs), programs)
            self._tokens[client_token] = job_id
            return job_id

    def status(self, job_id: str) -> JobStatus:
        """QUEUED, RUNNING, DONE, FAILED (with the exception's kind) or CANCELLED."""
        future, _ = self._jobs[job_id]
        if future.cancelled():
            return JobStatus(JobState.CANCELLED)
        if not future.done():
            return JobStatus(JobState.RUNNING if future.running() else JobState.QUEUED)
        error = future.exception()
        if error is None:
            return JobStatus(JobState.DONE)
        kind = error.kind if isinstance(error, TransientBackendError) else type(error).__name__
        return JobStatus(JobState.FAILED, error_kind=kind, message=str(error))

    def results(self, job_id: str) -> list[ProgramResult]:
        """The results of a DONE job."""
        future, _ = self._jobs[job_id]
        if not future.done() or future.cancelled() or future.exception() is not None:
            raise JobNotDoneError(f"job {job_id} is {self.status(job_id).state.value}, not done")
        return future.result()

    def cancel(self, job_id: str) -> None:
        """Cancel the job if it has not started (a running sampler call cannot be interrupted)."""
        self._jobs[job_id][0].cancel()

    def close(self) -> None:
        """Stop the worker pool (waits for running calls)."""
        self._pool.shutdown(wait=True)


class ExecutorSampler(cirq.Sampler):
    """An :class:`Executor` seen as a ``cirq.Sampler``: what sampling backends and gradient rules consume.

    ``run_sweep`` and ``run_batch`` turn every (circuit, resolver) pair into one program and hand them all to the
    executor at once, so a whole parameter-shift gradient becomes a few concurrent jobs.
    """

    def __init__(self, executor: Executor) -> None:
        """Wrap ``executor``."""
        self.executor = executor

    def run_sweep(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """Run one circuit over a sweep through the executor."""
        programs = [Program(program, r, repetitions) for r in cirq.to_resolvers(params)]
        return [r.result for r in self.executor.run(programs)]

    def run_batch(
        self,
        programs: Sequence[cirq.AbstractCircuit],
        params_list: Sequence[cirq.Sweepable] | None = None,
        repetitions: int | Sequence[int] = 1,
    ) -> Sequence[Sequence[cirq.Result]]:
        """Run several circuits and sweeps in one executor call (so they share jobs and concurrency)."""
        params_list = list(params_list) if params_list is not None else [None] * len(programs)
        reps = [repetitions] * len(programs) if isinstance(repetitions, int) else list(repetitions)
        flat: list[Program] = []
        sizes = []
        for circuit, params, r in zip(programs, params_list, reps, strict=True):
            resolvers = list(cirq.to_resolvers(params))
            flat.extend(Program(circuit, resolver, r) for resolver in resolvers)
            sizes.append(len(resolvers))
        results = [r.result for r in self.executor.run(flat)]
        out, start = [], 0
        for size in sizes:
            out.append(results[start : start + size])
            start += size
        return out
