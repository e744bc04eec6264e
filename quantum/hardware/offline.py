"""What a cycle does when its device goes offline: wait, fall back to a simulator, or fail; the choice as data.

The executor decides *that* the device is offline (it refused work as offline for longer than its
``offline_timeout_s``, :class:`~quantum.qpu.DeviceOfflineError`); this module decides *what then*. The ``wait``
policy is a longer timeout (the factory sets it) followed by failing, so only ``fallback`` changes the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from quantum.backends import Backend
from quantum.circuits import QnnCircuit
from quantum.executor import Executor
from quantum.hardware.shots import ExecutorBackend
from quantum.qpu.errors import DeviceOfflineError

OfflinePolicy = Literal["wait", "fallback", "fail"]
OFFLINE_POLICIES: tuple[OfflinePolicy, ...] = ("wait", "fallback", "fail")


@dataclass(frozen=True)
class OfflineOutcome:
    """What the offline policy did, for the cycle's record.

    Attributes:
        policy: the configured policy.
        action: ``fell_back`` (the rest of the cycle ran on the simulator) or ``failed`` (the error was raised).
        reason: the executor's one-line error.
        device_programs: programs the device had completed before it went offline.
    """

    policy: OfflinePolicy
    action: Literal["fell_back", "failed"]
    reason: str
    device_programs: int

    def as_dict(self) -> dict[str, str | int]:
        """JSON-ready fields (the child reports them to the daemon)."""
        return {
            "policy": self.policy,
            "action": self.action,
            "reason": self.reason,
            "device_programs": self.device_programs,
        }


class OfflineGuard:
    """A QNN ``Backend`` over a device that applies the offline policy when the device stays offline.

    Once it has fallen back it stays on the simulator for its lifetime (one cycle), so the device is not probed
    again at every step and the cycle's numbers come from one backend after the switch.

    Attributes:
        device: the shot backend on the device.
        policy: ``wait``, ``fallback`` or ``fail``.
        fallback: the simulator used after a fallback.
        outcome: ``None`` while the device serves, else what the policy did.
        fallback_rows: symbol rows evaluated on the fallback.
        error: the first error that ended an evaluation (spend limit, offline, retries): a caller behind a JAX
            callback, which re-raises errors as a generic type, finds the real one here.
    """

    def __init__(
        self, device: ExecutorBackend, policy: OfflinePolicy, *, fallback: Backend | None = None
    ) -> None:
        if policy not in OFFLINE_POLICIES:
            raise ValueError(f"unknown offline policy {policy!r}; choose one of {list(OFFLINE_POLICIES)}")
        if policy == "fallback" and fallback is None:
            raise ValueError(
                "offline policy 'fallback' needs a fallback backend (e.g. quantum.QsimBackend())"
            )
        self.device = device
        self.policy: OfflinePolicy = policy
        self.fallback = fallback
        self.outcome: OfflineOutcome | None = None
        self.fallback_rows = 0
        self.error: BaseException | None = None
        self.name = device.name

    @property
    def executor(self) -> Executor:
        """The device's executor (its counters are the cycle's shots and cost)."""
        return self.device.executor

    @property
    def repetitions(self) -> int:
        """Shots per circuit on the device."""
        return self.device.repetitions

    def evaluate(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        """The device's estimates, or the fallback's once the policy has switched to it.

        Raises:
            DeviceOfflineError: the device stayed offline and the policy is ``wait`` or ``fail``.
        """
        if self.outcome is not None and self.outcome.action == "fell_back":
            return self._on_fallback(qc, values)
        try:
            return self.device.evaluate(qc, values)
        except DeviceOfflineError as err:
            action = "fell_back" if self.policy == "fallback" else "failed"
            if self.outcome is None:
                programs = self.device.executor.stats().programs
                self.outcome = OfflineOutcome(self.policy, action, str(err), programs)
            if action == "failed":
                self.error = self.error or err
                raise
            return self._on_fallback(qc, values)
        except Exception as err:
            self.error = self.error or err
            raise

    def _on_fallback(self, qc: QnnCircuit, values: np.ndarray) -> np.ndarray:
        assert self.fallback is not None  # checked in __init__ for the fallback policy
        self.fallback_rows += len(values)
        return self.fallback.evaluate(qc, values)
