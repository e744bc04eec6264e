"""The store's domain errors. Each message names the offending value and says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.store.records import Lease

__all__ = [
    "ChampionMovedError",
    "ChampionPinnedError",
    "CycleAlreadyRunningError",
    "DatabaseUnavailableError",
    "DatabaseUrlError",
    "InvalidSampleError",
    "LeaseHeldError",
    "NotFoundError",
    "SchemaTooNewError",
    "StaleCycleError",
    "StaleEpochError",
    "StoreError",
    "VersionStateError",
]


class StoreError(RuntimeError):
    """Base class of every error raised by :mod:`agent.store`."""


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer qtha; this one must not write to it."""


class NotFoundError(StoreError, LookupError):
    """A row that the caller named does not exist."""


class ChampionMovedError(StoreError):
    """A promotion's compare-and-swap lost: the champion epoch is no longer the one the caller saw."""


class ChampionPinnedError(StoreError):
    """An automatic promotion was refused because an operator pinned the champion."""


class VersionStateError(StoreError, ValueError):
    """A version is in a status that forbids the requested move (e.g. promoting a rejected version)."""


class CycleAlreadyRunningError(StoreError):
    """Another cycle is not finished yet; at most one cycle runs at a time (enforced by the database)."""


class StaleCycleError(StoreError):
    """A cycle transition lost: the cycle changed state or owner since the caller read it."""


class StaleEpochError(StoreError):
    """The caller's leader lease epoch is no longer current: another process took the lease."""


class LeaseHeldError(StoreError):
    """The leader lease is held by another live holder.

    Attributes:
        current: the holder's lease as read (None when it changed hands during the attempt): a standby shows who
            leads without reading the lease again.
    """

    def __init__(self, message: str, *, current: Lease | None = None) -> None:
        super().__init__(message)
        self.current = current


class InvalidSampleError(StoreError, ValueError):
    """A metric sample with a non-finite value or a name/label that is empty, too long or has blanks."""


class DatabaseUrlError(StoreError, ValueError):
    """``database.url`` is not a URL qtha can use (syntax, backend or driver); a configuration error."""


class DatabaseUnavailableError(StoreError):
    """The database cannot be reached or opened (server down, bad credentials, unwritable SQLite file)."""
