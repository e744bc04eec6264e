"""The device path's injected time: the wall clock, and a simulated one for tests and emulated-latency runs.

Named ``Device*`` because this clock is monotonic seconds for queue latency, polling and back-off on a quantum
device; the agent's own clock (timezone-aware datetimes for scheduling) is a different thing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RealDeviceClock:
    """Wall time: ``time.monotonic`` and ``time.sleep``."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds``."""
        if seconds > 0:
            time.sleep(seconds)


class SimulatedDeviceClock:
    """A clock that only moves when someone sleeps on it; safe to share between threads.

    ``sleep(s)`` returns at once after advancing the time by ``s``, so code that waits on an emulated queue
    finishes instantly while still seeing the emulated latencies. With several threads sleeping, time advances
    by the sum of their sleeps (a pessimistic clock): orderings stay causal, durations are upper bounds.

    Example:
        >>> clock = SimulatedDeviceClock(start=100.0)
        >>> clock.sleep(2.5)
        >>> clock.now()
        102.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.slept = 0.0  # total seconds slept, for tests that check back-off happened

    def now(self) -> float:
        """The simulated time in seconds."""
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Advance the simulated time by ``seconds`` (negative values are ignored)."""
        if seconds <= 0:
            return
        with self._lock:
            self._now += seconds
            self.slept += seconds


class DeviceClock(Protocol):
    """What the device path needs from time: read it and wait on it."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...
