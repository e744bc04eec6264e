"""DeviceEmulator: an offline stand-in for a superconducting QPU cloud, usable as a cirq.Sampler or a JobBackend."""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cirq
import numpy as np

from quantum.emulator.calibration import Calibration
from quantum.emulator.compile import CompiledCircuit, compile_for_device
from quantum.emulator.device import DeviceSpec
from quantum.emulator.engine import DensityMatrixEngine
from quantum.emulator.jobs import EmulatedJob, FailureModel, LatencyModel, draw_submission
from quantum.emulator.noise import add_noise, apply_readout_error
from quantum.qpu.clock import DeviceClock, RealDeviceClock
from quantum.qpu.errors import (
    JobNotDoneError,
    JobTooLargeError,
    TransientBackendError,
)
from quantum.qpu.pricing import DevicePricing
from quantum.qpu.protocol import JobState, JobStatus, Program, ProgramResult

EngineFactory = Callable[[int], cirq.Sampler]
"""Builds the simulator that runs noisy circuits, from a per-program seed."""


def density_matrix_engine(seed: int) -> cirq.Sampler:
    """cirq's density-matrix simulator (a slower reference for the default :class:`DensityMatrixEngine`)."""
    return cirq.DensityMatrixSimulator(seed=seed)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that defines an emulated device and its cloud.

    Attributes:
        device: grid and native gates (72 qubits by default; use e.g. 3×3 in tests).
        latency: queue and run times.
        failures: seeded transient failures.
        pricing: prices.
        max_programs_per_job: the vendor's batch cap (Origin's cloud takes ~200 programs per batch).
        max_shots_per_program: the vendor's shot cap.
        seed: seeds latencies, failures, shot noise and readout flips.
    """

    device: DeviceSpec = field(default_factory=DeviceSpec)
    latency: LatencyModel = field(default_factory=LatencyModel)
    failures: FailureModel = field(default_factory=FailureModel)
    pricing: DevicePricing = field(default_factory=DevicePricing)
    max_programs_per_job: int = 200
    max_shots_per_program: int = 100_000
    seed: int = 0


@dataclass(frozen=True)
class Billing:
    """What the emulated cloud charged so far (completed jobs only)."""

    jobs: int
    shots: int
    cost: float


@dataclass
class _JobRecord:
    job: EmulatedJob
    programs: tuple[Program, ...]
    compiled: tuple[CompiledCircuit, ...]
    token: str
    results: list[ProgramResult] | None = None
    charged: bool = False


class DeviceEmulator(cirq.Sampler):
    """An emulated superconducting QPU behind an emulated cloud queue.

    Circuits are compiled to the native gate set and routed onto live couplers, validated, run with the
    calibration's noise model on an injected simulator engine, sampled with shot noise and read with readout
    errors. Jobs wait and fail as ``config.latency`` / ``config.failures`` say, timed by the injected clock.

    Example:
        >>> config = EmulatorConfig(device=DeviceSpec(rows=3, cols=3))
        >>> emulator = DeviceEmulator(config, clock=SimulatedDeviceClock())
        >>> q = cirq.LineQubit(0)
        >>> emulator.run(cirq.Circuit(cirq.X(q), cirq.measure(q, key="m")), repetitions=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        calibration: Calibration | None = None,
        clock: DeviceClock | None = None,
        engine: EngineFactory | None = None,
        poll_s: float = 0.5,
    ) -> None:
        """Create an emulator.

        Args:
            config: device, latency, failures, pricing and caps.
            calibration: the snapshot that drives noise and dead couplers; a seeded synthetic one by default.
            clock: time source for queue latency (a SimulatedDeviceClock in tests).
            engine: simulator factory for noisy circuits; by default an exact density-matrix engine sharing one
                superoperator cache (fine up to ~10 active qubits); qsim trajectories for wider circuits via
                ``quantum.backends.noisy_qsim.qsim_trajectory_engine``.
            poll_s: how often the blocking Sampler interface polls its own jobs.
        """
        self.config = config or EmulatorConfig()
        self.calibration = calibration or Calibration.synthetic(self.config.device, seed=self.config.seed)
        if self.calibration.device_name != self.config.device.name:
            raise ValueError(
                f"calibration is for {self.calibration.device_name!r} but the device is {self.config.device.name!r}"
            )
        self._clock = clock or RealDeviceClock()
        self._superoperators: dict = {}
        self._engine = engine or (lambda seed: DensityMatrixEngine(seed, cache=self._superoperators))
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._jobs: dict[str, _JobRecord] = {}
        self._tokens: dict[str, str] = {}
        self._compiled: OrderedDict[cirq.FrozenCircuit, CompiledCircuit] = OrderedDict()
        self._device_free_at = -np.inf
        self._offline_until = -np.inf
        self._sampler_jobs = 0
        self._billing = Billing(0, 0, 0.0)

    # --- JobBackend -------------------------------------------------------------------------------------------

    @property
    def max_programs_per_job(self) -> int:
        """The batch cap."""
        return self.config.max_programs_per_job

    def estimate_cost(self, programs: Sequence[Program]) -> float:
        """The price of a job of ``programs`` if it completes."""
        return self.config.pricing.job_cost(programs)

    def billing(self) -> Billing:
        """Jobs, shots and money charged so far."""
        with self._lock:
            return self._billing

    def compile(self, circuit: cirq.AbstractCircuit) -> CompiledCircuit:
        """Compile (or fetch the cached compilation of) a possibly symbolic circuit for this device."""
        key = cirq.FrozenCircuit(circuit)
        with self._lock:
            hit = self._compiled.get(key)
        if hit is not None:
            return hit
        compiled = compile_for_device(circuit, self.config.device, self.calibration)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > 256:
                self._compiled.popitem(last=False)
        return compiled

    def noisy_circuit(self, program: Program) -> cirq.Circuit:
        """The resolved, compiled circuit with the calibration's gate and idle noise, as the engine runs it."""
        compiled = cirq.resolve_parameters(self.compile(program.circuit).circuit, program.params)
        return add_noise(compiled, self.config.device, self.calibration)

    def submit(self, programs: Sequence[Program], *, client_token: str) -> str:
        """Queue a job; see :class:`quantum.qpu.protocol.JobBackend`.

        Programs are compiled and validated here, as vendors reject invalid programs at submission.
        """
        programs = tuple(programs)
        if not programs:
            raise ValueError("a job needs at least one program")
        if len(programs) > self.config.max_programs_per_job:
            raise JobTooLargeError(
                f"{len(programs)} programs exceed the cap of {self.config.max_programs_per_job} per job on "
                f"{self.config.device.name!r}; split them (the Executor batches automatically)"
            )
        too_many = [p.repetitions for p in programs if p.repetitions > self.config.max_shots_per_program]
        if too_many:
            raise JobTooLargeError(
                f"{too_many[0]} shots exceed the cap of {self.config.max_shots_per_program} per program; "
                "split the shots over several programs"
            )
        with self._lock:
            if client_token in self._tokens:  # idempotent resubmission
                return self._tokens[client_token]
        compiled = tuple(self.compile(p.circuit) for p in programs)
        draw = draw_submission(self.config.seed, client_token, self.config.failures, self.config.latency)
        with self._lock:
            if client_token in self._tokens:
                return self._tokens[client_token]
            now = self._clock.now()
            if now < self._offline_until:
                raise TransientBackendError(
                    "device_offline",
                    f"{self.config.device.name} is in maintenance until t={self._offline_until:.1f}",
                    retry_after_s=self._offline_until - now,
                )
            if draw.refused == "device_offline":
                self._offline_until = now + self.config.failures.offline_s
                raise TransientBackendError(
                    "device_offline",
                    f"{self.config.device.name} went offline for recalibration",
                    retry_after_s=self.config.failures.offline_s,
                )
            if draw.refused == "rate_limit":
                raise TransientBackendError("rate_limit", "too many requests; slow down", retry_after_s=1.0)
            latency = self.config.latency
            shots = sum(p.repetitions for p in programs)
            starts_at = max(now + draw.queue_s, self._device_free_at)
            ends_at = starts_at + latency.per_program_s * len(programs) + latency.per_shot_s * shots
            self._device_free_at = ends_at
            job_id = f"{self.config.device.name}-job-{len(self._jobs):06d}"
            job = EmulatedJob(job_id, len(programs), shots, now, starts_at, ends_at, draw.server_error)
            self._jobs[job_id] = _JobRecord(job, programs, compiled, client_token)
            self._tokens[client_token] = job_id
            return job_id

    def _record(self, job_id: str) -> _JobRecord:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"unknown job id {job_id!r} on {self.config.device.name!r}") from None

    def status(self, job_id: str) -> JobStatus:
        """The job's state now (by the injected clock)."""
        with self._lock:
            record = self._record(job_id)
            status = record.job.status(self._clock.now())
            if status.state is JobState.DONE and not record.charged:
                record.charged = True
                b = self._billing
                self._billing = Billing(
                    b.jobs + 1,
                    b.shots + record.job.shots,
                    b.cost + self.config.pricing.job_cost(record.programs),
                )
            return status

    def cancel(self, job_id: str) -> None:
        """Cancel the job unless it already finished."""
        with self._lock:
            record = self._record(job_id)
            now = self._clock.now()
            if not record.job.status(now).state.terminal:
                record.job.cancelled_at = now

    def results(self, job_id: str) -> list[ProgramResult]:
        """Simulate (once) and return the results of a DONE job.

        Raises:
            JobNotDoneError: the job is not DONE.
        """
        status = self.status(job_id)
        if status.state is not JobState.DONE:
            raise JobNotDoneError(f"job {job_id} is {status.state.value}, not done; poll status() first")
        with self._lock:
            record = self._record(job_id)
            if record.results is not None:
                return list(record.results)
        token_seed = zlib.crc32(record.token.encode())
        results = [
            self._simulate(program, compiled, [self.config.seed, token_seed, index])
            for index, (program, compiled) in enumerate(zip(record.programs, record.compiled, strict=True))
        ]
        with self._lock:
            if record.results is None:
                record.results = results
            return list(record.results)

    def _simulate(self, program: Program, compiled: CompiledCircuit, seed: list[int]) -> ProgramResult:
        rng = np.random.default_rng(seed)
        resolved = cirq.resolve_parameters(compiled.circuit, program.params)
        noisy = add_noise(resolved, self.config.device, self.calibration)
        engine = self._engine(int(rng.integers(2**31)))
        raw = engine.run(noisy, repetitions=program.repetitions)
        measured = {
            op.gate.key: tuple(op.qubits)
            for op in resolved.all_operations()
            if isinstance(op.gate, cirq.MeasurementGate)
        }
        measurements = {
            key: apply_readout_error(raw.measurements[key], qubits, self.calibration, rng)
            for key, qubits in measured.items()
        }
        return ProgramResult(cirq.ResultDict(params=program.params, measurements=measurements), measured)

    # --- cirq.Sampler -----------------------------------------------------------------------------------------

    def run_sweep(
        self, program: cirq.AbstractCircuit, params: cirq.Sweepable, repetitions: int = 1
    ) -> Sequence[cirq.Result]:
        """Run a circuit over a sweep, blocking until done (no retries; the Executor adds them).

        Raises:
            TransientBackendError: a job was refused or failed.
            DeviceValidationError: the circuit cannot run on the device.
        """
        programs = [Program(program, r, repetitions) for r in cirq.to_resolvers(params)]
        out: list[cirq.Result] = []
        cap = self.config.max_programs_per_job
        for start in range(0, len(programs), cap):
            with self._lock:
                self._sampler_jobs += 1
                token = f"sampler-{self._sampler_jobs}"
            job_id = self.submit(programs[start : start + cap], client_token=token)
            while not (status := self.status(job_id)).state.terminal:
                self._clock.sleep(self._poll_s)
            if status.state is not JobState.DONE:
                raise TransientBackendError(
                    "server_error", f"job {job_id} ended {status.state.value}: {status.message}"
                )
            out.extend(r.result for r in self.results(job_id))
        return out
