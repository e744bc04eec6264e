"""Build a hardware backend from plain configuration values (what the agent's ``quantum`` section holds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from quantum.backends.origin import OriginQCloudBackend
from quantum.backends.vendor import sampler_from_import_path
from quantum.emulator import Calibration, DeviceEmulator, EmulatorConfig
from quantum.executor import Executor, ExecutorConfig, SamplerJobBackend
from quantum.hardware.shots import ConfusionSource, ExecutorBackend
from quantum.qpu.clock import DeviceClock
from quantum.qpu.protocol import JobBackend

HardwareKind = Literal["emulator", "sampler", "origin"]


def job_backend(
    kind: HardwareKind,
    *,
    sampler: str | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    emulator: EmulatorConfig | None = None,
    calibration: Calibration | None = None,
    origin_api_key: str | None = None,
    origin_backend: str | None = None,
    clock: DeviceClock | None = None,
) -> JobBackend:
    """The job backend of one kind.

    Args:
        kind: ``emulator`` (offline device), ``sampler`` (any cirq.Sampler by import path) or ``origin`` (QCloud).
        sampler: ``"module:factory"`` for ``sampler``.
        sampler_options: keyword arguments of that factory.
        emulator: device, latency, failures and cost of the ``emulator``.
        calibration: the emulator's calibration snapshot (e.g. ``Calibration.from_json(text)``).
        origin_api_key: QCloud API key for ``origin``.
        origin_backend: QCloud chip name for ``origin``.
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
        return SamplerJobBackend(sampler_from_import_path(sampler, **dict(sampler_options or {})))
    if kind == "origin":
        return OriginQCloudBackend(api_key=origin_api_key, backend_name=origin_backend)
    raise ValueError(f"unknown hardware kind {kind!r}; choose 'emulator', 'sampler' or 'origin'")


def executor_backend(
    backend: JobBackend,
    *,
    shots: int = 1000,
    executor: ExecutorConfig | None = None,
    clock: DeviceClock | None = None,
    mitigate_readout: bool = True,
) -> ExecutorBackend:
    """A QNN ``Backend`` over ``backend``: an executor, shots per circuit and readout mitigation when possible.

    Readout mitigation needs a calibration, which only the emulator exposes here; for vendors it is off.
    """
    confusions: ConfusionSource | None = None
    if mitigate_readout and isinstance(backend, DeviceEmulator):
        confusions = backend.calibration.confusion_matrices
    return ExecutorBackend(
        Executor(backend, executor, clock=clock), repetitions=shots, confusions_for=confusions
    )
