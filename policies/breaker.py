"""The circuit breaker: repeated failed cycles stop the agent for a back-off, then allow one probe.

State is derived from the cycle history alone (no stored breaker state to get out of sync):

- ``c`` = the number of consecutive failed cycles at the end of the history (finished cycles, by start time).
- ``c < failures_to_open``: **closed**.
- otherwise the breaker opened at the last failure's end, for ``backoff * 2**(c - failures_to_open)`` (at most
  ``max_backoff``): **open** until then, **half-open** after. A half-open cycle is the probe: if it succeeds
  ``c`` drops to 0 (closed); if it fails ``c`` grows by one and the breaker opens again for twice as long.
  Only one probe runs at a time because the trigger never starts a cycle while one is running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from .decision import PolicyInputError
from .records import CycleRecord

__all__ = ["BreakerConfig", "BreakerStatus", "breaker_status"]


@dataclass(frozen=True)
class BreakerConfig:
    """When the breaker opens and for how long.

    Attributes:
        failures_to_open: K, the consecutive failed cycles that open it.
        backoff: how long it stays open after the K-th failure; doubles with each failed probe.
        max_backoff: the cap on the doubled back-off.
    """

    failures_to_open: int = 3
    backoff: timedelta = timedelta(hours=1)
    max_backoff: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise PolicyInputError(f"BreakerConfig.failures_to_open = {self.failures_to_open} must be >= 1")
        if self.backoff <= timedelta(0) or self.max_backoff < self.backoff:
            raise PolicyInputError(
                f"BreakerConfig backoff = {self.backoff} must be > 0 and <= max_backoff = {self.max_backoff}"
            )


@dataclass(frozen=True)
class BreakerStatus:
    """The breaker's state at ``now``.

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        consecutive_failures: failed cycles at the end of the history.
        open_until: when an open breaker becomes half-open (``None`` when closed).
    """

    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    open_until: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "open_until": self.open_until,
        }


def breaker_status(
    cycles: Iterable[CycleRecord], now: datetime, config: BreakerConfig = BreakerConfig()
) -> BreakerStatus:
    """Derives the breaker's state from the finished cycles (running ones are ignored)."""
    finished = sorted((c for c in cycles if c.finished_at is not None), key=lambda c: c.started_at)
    failures = 0
    for cycle in reversed(finished):
        if not cycle.failed:
            break
        failures += 1
    if failures < config.failures_to_open:
        return BreakerStatus("closed", failures, None)
    # In float seconds: a long failure streak must not overflow timedelta before max_backoff applies.
    doublings = min(failures - config.failures_to_open, 60)
    seconds = min(config.backoff.total_seconds() * 2.0**doublings, config.max_backoff.total_seconds())
    backoff = timedelta(seconds=seconds)
    last_end = finished[-1].finished_at
    assert last_end is not None  # finished cycles only
    open_until = last_end + backoff
    return BreakerStatus("open" if now < open_until else "half_open", failures, open_until)
