"""The circuit breaker: closed -> open -> half-open -> open (longer) -> half-open -> closed, hand-timed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from policies import BreakerConfig, PolicyInputError, breaker_status
from tests.policies.helpers import at, cycle

CONFIG = BreakerConfig(failures_to_open=3, backoff=timedelta(hours=1), max_backoff=timedelta(hours=24))
THREE_FAILURES = [cycle(7, 8, "failed"), cycle(8, 9, "failed"), cycle(9, 10, "failed")]
PROBE_FAILED = [*THREE_FAILURES, cycle(11, 11.5, "failed")]
PROBE_OK = [*PROBE_FAILED, cycle(13.5, 14, "rejected")]


@pytest.mark.parametrize(
    ("cycles", "now_h", "state", "failures", "open_until_h"),
    [
        ([cycle(5, 6, "promoted"), *THREE_FAILURES[:2]], 10.5, "closed", 2, None),
        # K = 3 failures, the last ending at 10:00 -> open for 1 h.
        (THREE_FAILURES, 10.5, "open", 3, 11.0),
        (THREE_FAILURES, 10.999, "open", 3, 11.0),
        # Back-off over: the next cycle is the half-open probe.
        (THREE_FAILURES, 11.0, "half_open", 3, 11.0),
        # A running probe does not change the state (the trigger blocks a second cycle).
        ([*THREE_FAILURES, cycle(11, None)], 11.2, "half_open", 3, 11.0),
        # The probe failed at 11:30 -> open again for twice as long: until 13:30.
        (PROBE_FAILED, 12.0, "open", 4, 13.5),
        (PROBE_FAILED, 13.5, "half_open", 4, 13.5),
        # A successful (not failed: rejected is a working cycle) probe closes it.
        (PROBE_OK, 14.5, "closed", 0, None),
        # Ten failures: 1 h * 2**7 = 128 h is capped at 24 h after the last (ending at 10:00).
        ([cycle(h - 1, h, "failed") for h in range(1, 11)], 33.9, "open", 10, 34.0),
    ],
)
def test_breaker_states(
    cycles: list, now_h: float, state: str, failures: int, open_until_h: float | None
) -> None:
    status = breaker_status(cycles, at(now_h), CONFIG)
    assert status.state == state
    assert status.consecutive_failures == failures
    assert status.open_until == (None if open_until_h is None else at(open_until_h))


def test_order_of_records_does_not_matter() -> None:
    assert breaker_status(list(reversed(PROBE_OK)), at(14.5), CONFIG).state == "closed"


def test_huge_failure_streak_does_not_overflow() -> None:
    many = [cycle(h / 100, h / 100 + 0.001, "failed") for h in range(500)]
    status = breaker_status(many, at(6), CONFIG)
    assert status.open_until == at(4.991) + timedelta(hours=24)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failures_to_open": 0},
        {"backoff": timedelta(0)},
        {"backoff": timedelta(hours=2), "max_backoff": timedelta(hours=1)},
    ],
)
def test_bad_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(PolicyInputError):
        BreakerConfig(**kwargs)
