"""Time as an injected collaborator: a real clock for the daemon, a fake one for tests.

Everything in ``agent/`` that needs "now" takes a :class:`Clock`, so tests can move time without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> datetime:
        """The current time as a timezone-aware UTC datetime."""
        ...


class SystemClock:
    """The wall clock (UTC)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to.

    Example:
        >>> clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        >>> clock.advance(30)
        >>> clock.now().second
        30
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(f"FakeClock needs a timezone-aware start, got naive {start!r}; add tzinfo=UTC")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves time forward by ``seconds`` (never backwards: real clocks used for leases do not)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards by {seconds} s; pass a non-negative number")
        self._now += timedelta(seconds=seconds)
