"""The leader lease: one holder at a time, a fencing epoch that grows with every acquisition.

Only the holder schedules work. A holder that was paused past its expiry and lost the lease learns it on the next
renew (:class:`StaleEpochError`); the epoch lets other writers reject its late writes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select, update

from agent.clock import Clock
from agent.store import _convert
from agent.store._db import LEASE_LOCK_KEY, TableAccess
from agent.store._migrations import LEADER_LEASE
from agent.store._tables import LeaseRow
from agent.store.errors import LeaseHeldError, StaleEpochError
from agent.store.records import Lease

_T = LeaseRow.__table__  # type: ignore[attr-defined]


def _read(conn: Connection, name: str) -> Lease | None:
    row = conn.execute(select(_T).where(_T.c.name == name)).mappings().first()
    return None if row is None else _convert.lease(row)


def check_fence(conn: Connection, lease: Lease | None, now: datetime) -> None:
    """Refuses a write unless ``lease`` is the current, unexpired term of its lease.

    Runs inside the write's transaction. On PostgreSQL the lease row is read ``FOR SHARE``: a takeover (an
    ``UPDATE`` of that row) waits until this write commits, and a write that starts after the takeover sees the
    new epoch, so writes land in lease-term order. SQLite's write lock serializes everything anyway.

    Raises:
        StaleEpochError: not leading (``lease`` is None), or the lease moved on or expired.
    """
    if lease is None:
        raise StaleEpochError("this process does not hold the leader lease; only the leader may write this")
    row = conn.execute(select(_T).where(_T.c.name == lease.name).with_for_update(read=True)).mappings().first()
    _refuse_unless_current(lease, None if row is None else _convert.lease(row), now, "write refused: ")


def _refuse_unless_current(lease: Lease, current: Lease | None, now: datetime, prefix: str = "") -> None:
    if (
        current is None
        or current.epoch != lease.epoch
        or current.holder != lease.holder
        or current.expires_at is None
        or current.expires_at <= now
    ):
        raise StaleEpochError(
            f"{prefix}lease {lease.name!r} epoch {lease.epoch} of {lease.holder!r} is no longer current (now "
            f"epoch {current.epoch if current else '?'}, holder {current.holder if current else None!r}); "
            "stop acting as leader"
        )


def fence_for(token: Callable[[], Lease | None], clock: Clock) -> Callable[[Connection], None]:
    """The in-transaction check of a store fenced by ``token`` (this process's current lease, None if none)."""
    return lambda conn: check_fence(conn, token(), clock.now())


class Leases(TableAccess):
    """Leases by name; the daemon uses ``"leader"``."""

    def get(self, name: str = LEADER_LEASE) -> Lease:
        with self._db.tx(write=False) as conn:
            found = _read(conn, name)
        return found or Lease(name, None, 0, None, None, None)

    def acquire(self, holder: str, *, ttl_s: float, name: str = LEADER_LEASE) -> Lease:
        """Takes the lease if it is free, expired, or already ours (a restarted process under the same holder
        name starts a new term). Every acquisition increments the epoch.

        Raises:
            LeaseHeldError: another holder's lease has not expired; stay standby and retry after it expires.
        """
        now = self._clock.now()
        with self._db.tx(lock=LEASE_LOCK_KEY) as conn:
            current = _read(conn, name)
            if current is None:
                conn.execute(insert(_T).values(name=name, holder=None, epoch=0))
                current = Lease(name, None, 0, None, None, None)
            live = current.holder is not None and current.expires_at is not None and current.expires_at > now
            if live and current.holder != holder:
                raise LeaseHeldError(
                    f"lease {name!r} is held by {current.holder!r} (epoch {current.epoch}) until "
                    f"{current.expires_at:%Y-%m-%d %H:%M:%S} UTC; stay standby and retry after it expires",
                    current=current,
                )
            moved = conn.execute(
                update(_T)
                .where(_T.c.name == name, _T.c.epoch == current.epoch)
                .values(
                    holder=holder,
                    epoch=current.epoch + 1,
                    acquired_at=now,
                    heartbeat_at=now,
                    expires_at=now + timedelta(seconds=ttl_s),
                )
            )
            if moved.rowcount != 1:
                raise LeaseHeldError(f"lease {name!r} changed hands while acquiring it; retry")
            found = _read(conn, name)
            assert found is not None
            return found

    def renew(self, lease: Lease, *, ttl_s: float) -> Lease:
        """Extends our lease (heartbeat).

        Raises:
            StaleEpochError: someone else acquired the lease since; stop acting as leader at once.
        """
        now = self._clock.now()
        with self._db.tx() as conn:
            moved = conn.execute(
                update(_T)
                .where(_T.c.name == lease.name, _T.c.holder == lease.holder, _T.c.epoch == lease.epoch)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl_s))
            )
            if moved.rowcount != 1:
                current = _read(conn, lease.name)
                raise StaleEpochError(
                    f"lease {lease.name!r} epoch {lease.epoch} of {lease.holder!r} is stale (now epoch "
                    f"{current.epoch if current else '?'} held by {current.holder if current else None!r}); "
                    "stop acting as leader"
                )
            found = _read(conn, lease.name)
            assert found is not None
            return found

    def release(self, lease: Lease) -> bool:
        """Gives the lease up (on clean shutdown) so a standby can take it at once. False if already lost."""
        now = self._clock.now()
        with self._db.tx() as conn:
            moved = conn.execute(
                update(_T)
                .where(_T.c.name == lease.name, _T.c.holder == lease.holder, _T.c.epoch == lease.epoch)
                .values(holder=None, expires_at=now, heartbeat_at=now)
            )
            return moved.rowcount == 1

    def check(self, lease: Lease) -> None:
        """Raises StaleEpochError unless ``lease`` is still the current, unexpired term."""
        _refuse_unless_current(lease, self.get(lease.name), self._clock.now())
