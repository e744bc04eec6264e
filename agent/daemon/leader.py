"""Leader election on the database lease: one daemon schedules work, the others wait as standbys.

Safety ("never two leaders at once") rests on two rules:

* a standby acquires only after the holder's ``expires_at`` has passed (the store refuses earlier);
* a leader stops acting as leader *before* that instant by its own reckoning — its term is valid until the time it
  started its last successful renewal plus the TTL minus a safety margin — even if it cannot reach the database to
  learn that it lost. A leader that cannot renew therefore steps down by itself before anyone else can step up.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta

from agent.clock import Clock
from agent.store import LEADER_LEASE, Lease, LeaseHeldError, Leases, StaleEpochError, StoreError

__all__ = ["Leadership", "default_replica_id"]

log = logging.getLogger(__name__)


def default_replica_id() -> str:
    """``<hostname>:<pid>``: unique per process, so a restarted daemon never mistakes an old term for its own."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """This process's view of the leader lease.

    Args:
        leases: the store's lease table.
        holder: this replica's name.
        ttl_s: lease lifetime; call :meth:`tick` every ``ttl_s / 3`` or so.
        clock: the same clock the store uses.
        safety: fraction of the TTL given up as a margin against a slow renewal (default 10%).

    Example:
        >>> from agent.store import open_store
        >>> store = open_store("sqlite:///:memory:")
        >>> leader = Leadership(store.leases, "a", ttl_s=30, clock=store.clock)
        >>> leader.tick()
        True
    """

    def __init__(
        self, leases: Leases, holder: str, *, ttl_s: float, clock: Clock, safety: float = 0.1
    ) -> None:
        if not 0 <= safety < 1:
            raise ValueError(f"safety = {safety} must be in [0, 1)")
        self._leases = leases
        self.holder = holder
        self.ttl_s = ttl_s
        self._clock = clock
        self._margin = timedelta(seconds=ttl_s * safety)
        self._lease: Lease | None = None
        self._valid_until: datetime | None = None
        self._other: Lease | None = None

    @property
    def other(self) -> Lease | None:
        """Another replica's live lease as this standby last saw it (None while leading, or when the lease was
        free or changing hands at the last attempt): whom a standby waits for, read at no extra cost."""
        return None if self.is_leader() else self._other

    @property
    def lease(self) -> Lease | None:
        return self._lease if self.is_leader() else None

    @property
    def epoch(self) -> int | None:
        lease = self.lease
        return None if lease is None else lease.epoch

    def is_leader(self) -> bool:
        """Whether this process may act as leader now (checked locally, without the database)."""
        return self._valid_until is not None and self._clock.now() < self._valid_until

    def tick(self) -> bool:
        """Renews the lease if held, else tries to acquire it. Returns whether this process is leader.

        Database errors are logged, not raised: a leader that cannot renew keeps its term only until its local
        deadline, then steps down.
        """
        started = self._clock.now()
        try:
            if self._lease is not None and self.is_leader():
                self._lease = self._leases.renew(self._lease, ttl_s=self.ttl_s)
            else:
                if self._lease is not None:
                    log.warning(
                        "leader term of %s (epoch %d) ran out before renewal", self.holder, self._lease.epoch
                    )
                    self._lease = None
                self._lease = self._leases.acquire(self.holder, ttl_s=self.ttl_s, name=LEADER_LEASE)
                log.info("%s became leader (epoch %d)", self.holder, self._lease.epoch)
        except LeaseHeldError as exc:
            self._lease, self._valid_until, self._other = None, None, exc.current
            return False
        except StaleEpochError as exc:
            log.warning("lost the leader lease: %s", exc)
            self._lease, self._valid_until, self._other = None, None, None
            return False
        except StoreError as exc:
            log.error("lease renewal failed (%s); leader until %s at most", exc, self._valid_until)
            return self.is_leader()
        except (
            Exception
        ) as exc:  # the database driver's OperationalError and friends: keep the local deadline
            log.error(
                "lease renewal failed (%s: %s); leader until %s at most",
                type(exc).__name__,
                exc,
                self._valid_until,
            )
            return self.is_leader()
        self._valid_until = started + timedelta(seconds=self.ttl_s) - self._margin
        self._other = None
        return True

    def release(self) -> None:
        """Gives the lease up so a standby takes over at once (clean shutdown)."""
        if self._lease is not None:
            try:
                self._leases.release(self._lease)
            except Exception as exc:  # shutting down: the lease then simply expires
                log.warning("could not release the leader lease (%s); it expires in %s s", exc, self.ttl_s)
        self._lease, self._valid_until = None, None
