"""Build a hardware backend from plain, typed configuration values (the agent translates its config into these).

:func:`device_backend` is the one entry the daemon's child uses: options in, a QNN ``Backend`` plus its gradient
rule out. :func:`job_backend` and :func:`executor_backend` are its two halves, for callers that want only one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from quantum.backends import Backend, QsimBackend
from quantum.backends.origin import OriginQCloudBackend, OriginRunOptions
from quantum.backends.vendor import sampler_from_import_path
from quantum.emulator import Calibration, DeviceEmulator, EmulatorConfig
from quantum.executor import Executor, ExecutorConfig, SamplerJobBackend, SpendLimit
from quantum.gradients import GradientRule, ParameterShift, Spsa
from quantum.hardware.offline import OfflineGuard, OfflinePolicy
from quantum.hardware.shots import ConfusionSource, ExecutorBackend
from quantum.qpu.clock import DeviceClock
from quantum.qpu.pricing import DevicePricing
from quantum.qpu.protocol import JobBackend

HardwareKind = Literal["emulator", "sampler", "origin"]
GradientKind = Literal["parameter-shift", "spsa"]


@dataclass(frozen=True)
class OriginOptions:
    """How to reach Origin QCloud.

    Attributes:
        backend_name: the chip, as ``QCloudService(api_key).backends()`` lists it.
        api_key: the key itself (kept out of ``repr``; the caller reads it from a file or the environment).
        run: amendment, mapping and optimisation asked of QCloud for each batch.
    """

    backend_name: str
    api_key: str = field(repr=False)
    run: OriginRunOptions = field(default_factory=OriginRunOptions)


@dataclass(frozen=True)
class HardwareOptions:
    """Everything that turns a device into a QNN backend for one cycle.

    Attributes:
        kind: ``emulator`` (offline device), ``sampler`` (a cirq.Sampler by import path) or ``origin`` (QCloud).
        shots: shots per circuit.
        gradient: ``parameter-shift`` (exact in expectation; 2-4 circuits per weight occurrence and example) or
            ``spsa`` (2 circuits per example and sample, whatever the number of weights).
        spsa_epsilon: SPSA's perturbation in radians.
        spsa_samples: SPSA perturbations averaged per gradient.
        seed: seeds SPSA's perturbations, the emulator and the executor's back-off jitter.
        sampler: ``"module:factory"`` for ``sampler``.
        sampler_options: keyword arguments of that factory.
        sampler_service_options: keyword arguments of the service's ``sampler()`` when the factory returns a
            service (cirq-ionq's ``target``).
        emulator: the emulator's device, latency, failures and prices (its seed is replaced by ``seed``).
        calibration: the emulator's calibration snapshot (a seeded synthetic one when ``None``).
        origin: how to reach QCloud, for ``origin``.
        pricing: the vendor's prices for ``sampler`` and ``origin`` (the emulator bills by ``emulator.pricing``).
        spend_limit: hard caps on the shots and money of this backend's lifetime (one cycle): a job that would
            exceed them is refused before it is submitted, with :class:`~quantum.qpu.SpendLimitError`.
        offline: ``wait`` (up to ``offline_wait_s``, then fail), ``fallback`` (to qsim) or ``fail``.
        offline_timeout_s: how long the device may refuse work as offline before ``fallback`` or ``fail`` acts.
        offline_wait_s: how long ``wait`` waits for the device to come back.
        mitigate_readout: invert readout errors where a calibration is known (the emulator).
        executor: batching, polling and retry settings (its spend limit and offline timeout are replaced).
    """

    kind: HardwareKind
    shots: int = 1000
    gradient: GradientKind = "parameter-shift"
    spsa_epsilon: float = 0.05
    spsa_samples: int = 1
    seed: int = 0
    sampler: str | None = None
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    sampler_service_options: Mapping[str, Any] = field(default_factory=dict)
    emulator: EmulatorConfig | None = None
    calibration: Calibration | None = None
    origin: OriginOptions | None = None
    pricing: DevicePricing | None = None
    spend_limit: SpendLimit = field(default_factory=SpendLimit)
    offline: OfflinePolicy = "fail"
    offline_timeout_s: float = 300.0
    offline_wait_s: float = 3600.0
    mitigate_readout: bool = True
    executor: ExecutorConfig | None = None

    def __post_init__(self) -> None:
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.gradient not in ("parameter-shift", "spsa"):
            raise ValueError(f"unknown gradient {self.gradient!r}; choose 'parameter-shift' or 'spsa'")
        for name in ("offline_timeout_s", "offline_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")

    def gradient_rule(self) -> GradientRule:
        """The gradient rule the options name."""
        if self.gradient == "spsa":
            return Spsa(seed=self.seed, epsilon=self.spsa_epsilon, samples=self.spsa_samples)
        return ParameterShift()

    def executor_config(self) -> ExecutorConfig:
        """The executor settings: the given ones with this cycle's spend limit and the offline policy's timeout.

        ``wait`` needs enough attempts to outlast its wait: each back-off is at least half of ``backoff_max_s``
        once it has grown, so the attempts are raised to cover ``offline_wait_s`` at that pace.
        """
        base = self.executor or ExecutorConfig(seed=self.seed)
        if self.offline != "wait":
            return replace(base, spend_limit=self.spend_limit, offline_timeout_s=self.offline_timeout_s)
        attempts = max(base.max_attempts, math.ceil(self.offline_wait_s / (0.5 * base.backoff_max_s)) + 8)
        return replace(
            base, spend_limit=self.spend_limit, offline_timeout_s=self.offline_wait_s, max_attempts=attempts
        )


@dataclass(frozen=True)
class DeviceSetup:
    """A device ready for training: the QNN backend, its gradient rule, and the parts a caller inspects.

    Attributes:
        backend: the QNN ``Backend`` (pass it with ``gradient`` to ``quantum.make_qnn``); it applies the offline
            policy, and its ``outcome`` records what the policy did.
        gradient: the gradient rule.
        device: the job backend (the emulator's ``billing``, a vendor adapter).
    """

    backend: OfflineGuard
    gradient: GradientRule
    device: JobBackend

    @property
    def executor(self) -> Executor:
        """The executor whose counters are the cycle's shots, cost and errors."""
        return self.backend.executor


def job_backend(
    kind: HardwareKind,
    *,
    sampler: str | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    sampler_service_options: Mapping[str, Any] | None = None,
    emulator: EmulatorConfig | None = None,
    calibration: Calibration | None = None,
    origin: OriginOptions | None = None,
    pricing: DevicePricing | None = None,
    clock: DeviceClock | None = None,
) -> JobBackend:
    """The job backend of one kind.

    Args:
        kind: ``emulator`` (offline device), ``sampler`` (any cirq.Sampler by import path) or ``origin`` (QCloud).
        sampler: ``"module:factory"`` for ``sampler``.
        sampler_options: keyword arguments of that factory.
        sampler_service_options: keyword arguments of the service's ``sampler()`` method, if it returns one.
        emulator: device, latency, failures and prices of the ``emulator``.
        calibration: the emulator's calibration snapshot (e.g. ``Calibration.from_json(text)``).
        origin: chip, API key and run options for ``origin``.
        pricing: the vendor's prices for ``sampler`` and ``origin`` (free when ``None``).
        clock: the emulator's clock.

    Raises:
        ValueError: a setting the kind needs is missing, or the kind is unknown.
    """
    if kind == "emulator":
        return DeviceEmulator(emulator, calibration=calibration, clock=clock)
    if kind == "sampler":
        if not sampler:
            raise ValueError(
                "kind='sampler' needs sampler='module:factory' (e.g. 'cirq_google:get_engine_sampler')"
            )
        made = sampler_from_import_path(
            sampler, sampler_options=sampler_service_options, **dict(sampler_options or {})
        )
        return SamplerJobBackend(made, pricing=pricing)
    if kind == "origin":
        if origin is None:
            raise ValueError("kind='origin' needs origin=OriginOptions(backend_name=..., api_key=...)")
        return OriginQCloudBackend(
            api_key=origin.api_key, backend_name=origin.backend_name, pricing=pricing, run_options=origin.run
        )
    raise ValueError(f"unknown hardware kind {kind!r}; choose 'emulator', 'sampler' or 'origin'")


def executor_backend(
    backend: JobBackend,
    *,
    shots: int = 1000,
    executor: ExecutorConfig | None = None,
    clock: DeviceClock | None = None,
    mitigate_readout: bool = True,
    client_id: str | None = None,
) -> ExecutorBackend:
    """A QNN ``Backend`` over ``backend``: an executor, shots per circuit and readout mitigation when possible.

    Readout mitigation needs a calibration, which only the emulator exposes here; for vendors it is off.
    ``client_id`` prefixes the executor's idempotency tokens (random by default; fixed for reproducible tests).
    """
    confusions: ConfusionSource | None = None
    if mitigate_readout and isinstance(backend, DeviceEmulator):
        confusions = backend.calibration.confusion_matrices
    return ExecutorBackend(
        Executor(backend, executor, clock=clock, client_id=client_id),
        repetitions=shots,
        confusions_for=confusions,
    )


def device_backend(
    options: HardwareOptions,
    *,
    clock: DeviceClock | None = None,
    device: JobBackend | None = None,
    fallback: Backend | None = None,
    client_id: str | None = None,
) -> DeviceSetup:
    """The QNN backend, gradient rule and offline guard that ``options`` describe.

    Args:
        options: the typed options.
        clock: the device path's clock (a ``SimulatedDeviceClock`` in tests).
        device: an already built job backend (tests inject one); built from ``options`` when ``None``.
        fallback: the simulator of the ``fallback`` policy (``QsimBackend()`` when ``None``).
        client_id: the executor's idempotency-token prefix (random when ``None``).

    Raises:
        ValueError: an option the kind needs is missing.
        ConnectionError: Origin QCloud could not be opened (the message never contains the key).
    """
    if device is None:
        emulator = options.emulator
        if options.kind == "emulator":
            emulator = replace(emulator or EmulatorConfig(), seed=options.seed)
        device = job_backend(
            options.kind,
            sampler=options.sampler,
            sampler_options=options.sampler_options,
            sampler_service_options=options.sampler_service_options,
            emulator=emulator,
            calibration=options.calibration,
            origin=options.origin,
            pricing=options.pricing,
            clock=clock,
        )
    shots = executor_backend(
        device,
        shots=options.shots,
        executor=options.executor_config(),
        clock=clock,
        mitigate_readout=options.mitigate_readout,
        client_id=client_id,
    )
    guard = OfflineGuard(
        shots,
        options.offline,
        fallback=(fallback or QsimBackend()) if options.offline == "fallback" else None,
    )
    return DeviceSetup(backend=guard, gradient=options.gradient_rule(), device=device)
