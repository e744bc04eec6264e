"""Leader election on the lease, with a fake clock: takeover after expiry, never two leaders."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.daemon.leader import Leadership
from agent.store import Store


def test_one_leader_standby_takes_over_after_expiry(sqlite_store: Store, fake_clock: FakeClock) -> None:
    a = Leadership(sqlite_store.leases, "a", ttl_s=30, clock=fake_clock)
    b = Leadership(sqlite_store.leases, "b", ttl_s=30, clock=fake_clock)
    assert a.tick() and not b.tick()
    epoch = a.epoch
    for _ in range(10):  # a keeps renewing every 10 s; b stays standby
        fake_clock.advance(10)
        assert a.tick() and not b.tick()
    # a hangs (no renewals). It considers itself leader only until 27 s after its last renewal started...
    fake_clock.advance(26)
    assert a.is_leader() and not b.tick()
    fake_clock.advance(1.5)
    assert not a.is_leader()
    # ... and b cannot take over before the lease in the database expires at 30 s.
    assert not b.tick()
    fake_clock.advance(3)
    assert b.tick() and b.epoch == epoch + 1
    assert not a.is_leader()
    # a wakes up: its renewal is refused and it stays standby.
    assert not a.tick() and a.lease is None and b.is_leader()


def test_release_hands_over_at_once(sqlite_store: Store, fake_clock: FakeClock) -> None:
    a = Leadership(sqlite_store.leases, "a", ttl_s=30, clock=fake_clock)
    b = Leadership(sqlite_store.leases, "b", ttl_s=30, clock=fake_clock)
    assert a.tick()
    a.release()
    assert not a.is_leader() and b.tick()


def test_database_outage_steps_down_by_the_local_deadline(sqlite_store: Store, fake_clock: FakeClock) -> None:
    a = Leadership(sqlite_store.leases, "a", ttl_s=30, clock=fake_clock)
    assert a.tick()
    sqlite_store.engine.dispose()

    class Broken:
        def renew(self, *args: object, **kwargs: object) -> None:
            raise OSError("database unreachable")

    a._leases = Broken()  # type: ignore[assignment]
    fake_clock.advance(10)
    assert a.tick()  # still within its term
    fake_clock.advance(17.5)
    assert not a.tick() and not a.is_leader()


def test_never_two_leaders_under_random_schedules(sqlite_store: Store, fake_clock: FakeClock) -> None:
    import random

    rng = random.Random(7)
    replicas = [Leadership(sqlite_store.leases, f"r{i}", ttl_s=10, clock=fake_clock) for i in range(3)]
    leaders_seen = set()
    for _ in range(400):
        fake_clock.advance(rng.uniform(0, 6))
        for replica in rng.sample(replicas, k=rng.randint(0, 3)):  # some replicas stall this round
            replica.tick()
        current = [r.holder for r in replicas if r.is_leader()]
        assert len(current) <= 1, current
        leaders_seen.update(current)
    assert len(leaders_seen) >= 2  # leadership did move around


def test_bad_safety_margin() -> None:
    with pytest.raises(ValueError, match="safety"):
        Leadership(None, "a", ttl_s=1, clock=FakeClock(), safety=1.5)  # type: ignore[arg-type]
