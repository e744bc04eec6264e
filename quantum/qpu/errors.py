"""Exceptions of the device path: each names the offending thing and says what to do about it."""

from __future__ import annotations

from typing import Literal

TransientKind = Literal["rate_limit", "server_error", "device_offline", "timeout"]


class DeviceValidationError(ValueError):
    """A program cannot run on the device: a non-native gate, an uncoupled pair or a dead coupler.

    Permanent for that program: retrying the same circuit fails the same way, so the executor does not retry.
    """


class JobTooLargeError(ValueError):
    """A job exceeds a vendor cap (programs per job or shots per program)."""


class TransientBackendError(RuntimeError):
    """A failure that may pass if the same work is retried later.

    Attributes:
        kind: what went wrong (``rate_limit``, ``server_error``, ``device_offline`` or ``timeout``).
        retry_after_s: the backend's hint of when to retry, if it gave one.
    """

    def __init__(self, kind: TransientKind, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: TransientKind = kind
        self.retry_after_s = retry_after_s


class SpendLimitError(RuntimeError):
    """The next job would exceed the executor's spend limit (shots or money); nothing over it was submitted.

    The caller should fall back to a simulator backend or raise the limit.
    """


class DeviceOfflineError(ConnectionError):
    """The device stayed unreachable longer than the executor's offline timeout.

    The caller should fall back to a simulator backend and retry the hardware later.
    """


class RetriesExhaustedError(RuntimeError):
    """A batch failed transiently more times than the executor's ``max_attempts`` allows."""


class JobNotDoneError(RuntimeError):
    """Results were asked for a job that has not finished; poll ``status`` until it is DONE."""


class JobFailedError(RuntimeError):
    """A job failed for a reason that retrying will not fix (the backend's message is included)."""
