"""Is the daemon really alive? The evidence the systemd watchdog ping is tied to.

A main loop that pings ``WATCHDOG=1`` whatever happens proves only that the main thread runs. The work happens
in the scheduler's threads, so two things are tracked here instead:

* the scheduler's ``heartbeat`` job (:func:`agent.daemon.jobs.heartbeat`) calls :meth:`Liveness.beat`; while the
  scheduler is expected to run (this replica leads), the last beat must be younger than ``stale_after_s``. A hung
  scheduler, or a thread pool whose every thread is stuck, stops the beats;
* every cycle step (and every evaluation) is entered with :meth:`Liveness.step_started` and a limit; one still
  running past its limit is stuck.

:meth:`Liveness.check` answers with a :class:`Verdict`; the lifecycle pings systemd only when it is alive and
logs the reason once when it is not (systemd then restarts the unit after ``WatchdogSec``).

Example:
    >>> now = [0.0]
    >>> live = Liveness(stale_after_s=30.0, monotonic=lambda: now[0])
    >>> live.expect_heartbeat(True)
    >>> live.check().alive
    True
    >>> now[0] = 31.0
    >>> live.check().reason
    'scheduler heartbeat last ran 31 s ago (limit 30 s): the scheduler is hung or its threads are all busy'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Liveness", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether to ping the watchdog, and why not."""

    alive: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    started: float
    limit_s: float


class Liveness:
    """Heartbeat and step deadlines (thread-safe; the clock is injected).

    Args:
        stale_after_s: the oldest a heartbeat may be while the scheduler is expected to run.
        monotonic: the time source (default ``time.monotonic``; tests pass a fake).
    """

    def __init__(self, *, stale_after_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self._now = monotonic
        self._lock = threading.Lock()
        self._last_beat: float | None = None
        self._expect = False
        self._steps: dict[str, _Step] = {}

    def beat(self) -> None:
        """The scheduler ran its heartbeat job."""
        with self._lock:
            self._last_beat = self._now()

    def expect_heartbeat(self, expected: bool) -> None:
        """The scheduler is resumed (leading: beats must arrive) or paused (standby: none can).

        Resuming restarts the count from now, so a standby that wins the lease is not judged on its idle time.
        """
        with self._lock:
            if expected and not self._expect:
                self._last_beat = self._now()
            self._expect = expected

    def step_started(self, key: str, *, limit_s: float, what: str | None = None) -> None:
        """A step began under ``key`` (``cycle``, ``evaluate``; a new step under the same key replaces the last);
        it must end within ``limit_s``. ``what`` names it in the log (default: the key)."""
        with self._lock:
            self._steps[key] = _Step(what or key, self._now(), limit_s)

    def step_finished(self, key: str) -> None:
        with self._lock:
            self._steps.pop(key, None)

    def check(self) -> Verdict:
        """Alive unless the expected heartbeat is stale or a step overran its limit (the reason says which)."""
        with self._lock:
            now = self._now()
            if self._expect and self._last_beat is not None and now - self._last_beat > self.stale_after_s:
                return Verdict(
                    False,
                    f"scheduler heartbeat last ran {now - self._last_beat:.0f} s ago (limit "
                    f"{self.stale_after_s:.0f} s): the scheduler is hung or its threads are all busy",
                )
            for step in self._steps.values():
                if now - step.started > step.limit_s:
                    return Verdict(
                        False,
                        f"{step.name} has run {now - step.started:.0f} s, beyond its limit of {step.limit_s:.0f} s",
                    )
        return Verdict(True)
