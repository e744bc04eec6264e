"""The champion pointer: promotion and rollback as a compare-and-swap on the champion epoch.

Every move happens in one transaction that (1) checks and bumps the epoch with ``UPDATE … WHERE epoch = :seen``,
(2) flips the version statuses, (3) appends the serve entry to the audit log and (4) closes the promoting cycle.
On PostgreSQL the transaction also holds an advisory lock; on SQLite ``BEGIN IMMEDIATE`` holds the write lock.
Either way, two writers can never both promote from the same epoch, and an optional ``within`` callback (the
``current`` symlink swap) runs while the lock is held, so pointer moves happen in epoch order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, select, update

from agent.store import _audit, _convert
from agent.store._db import PROMOTION_LOCK_KEY, TableAccess
from agent.store._tables import AuditRow, ChampionRow, CycleRow, VersionRow
from agent.store._versions import read_version
from agent.store.errors import ChampionMovedError, ChampionPinnedError, StaleCycleError, VersionStateError
from agent.store.records import AuditKind, ChampionState, CycleState, ModelVersion, VersionStatus

_C = ChampionRow.__table__  # type: ignore[attr-defined]
_V = VersionRow.__table__  # type: ignore[attr-defined]
_A = AuditRow.__table__  # type: ignore[attr-defined]
_CY = CycleRow.__table__  # type: ignore[attr-defined]

Within = Callable[[ChampionState], None]


def read_champion(conn: Connection) -> ChampionState:
    return _convert.champion(conn.execute(select(_C).where(_C.c.id == 1)).mappings().one())


class Champion(TableAccess):
    """The single champion row, its epoch, the pin, and every move of it."""

    def get(self) -> ChampionState:
        with self._db.tx(write=False) as conn:
            return read_champion(conn)

    def promote(
        self,
        version_id: str,
        *,
        expected_epoch: int,
        actor: str,
        reason: str,
        automatic: bool = False,
        cycle_id: int | None = None,
        details: Mapping[str, Any] | None = None,
        within: Within | None = None,
    ) -> ChampionState:
        """Makes ``version_id`` the champion if the epoch is still ``expected_epoch``.

        Args:
            version_id: a candidate or retired version.
            expected_epoch: the epoch the caller based its decision on.
            actor: who or what moves it ("cycle 12", "operator alice").
            reason: why (goes into the audit log).
            automatic: a policy decision, refused while the champion is pinned (operators may still move it).
            cycle_id: the cycle in state PROMOTE that is closed as PROMOTED in the same transaction.
            details: extra audit details.
            within: called with the new state before commit, under the lock; if it raises, nothing moves.

        Returns:
            The new champion state (epoch = expected_epoch + 1).

        Raises:
            ChampionMovedError: the epoch moved; re-read the champion and decide again.
            ChampionPinnedError: ``automatic`` and the champion is pinned.
            VersionStateError: the version is rejected, pruned or already champion.
            StaleCycleError: ``cycle_id`` is not in state PROMOTE.
        """
        with self._db.tx(lock=PROMOTION_LOCK_KEY, fenced=True) as conn:
            seen = self._check(conn, expected_epoch, actor=actor, automatic=automatic)
            target = read_version(conn, version_id)
            self._check_target(target, seen)
            new = self._move(
                conn,
                seen,
                target,
                demote_to=VersionStatus.RETIRED,
                actor=actor,
                reason=reason,
                details=dict(details or {}),
            )
            if cycle_id is not None:
                self._close_cycle(conn, cycle_id, version_id, new.epoch)
            if within is not None:
                within(new)
            return new

    def hold(self, within: Within) -> ChampionState:
        """Calls ``within`` with the champion state while holding the promotion lock (no move can interleave);
        used to bring the ``current`` pointer in line with the row after a crash."""
        with self._db.tx(lock=PROMOTION_LOCK_KEY) as conn:
            seen = read_champion(conn)
            within(seen)
            return seen

    def rollback_target(self) -> ModelVersion | None:
        """The version a rollback would serve: the latest earlier champion not rejected nor pruned."""
        with self._db.tx(write=False) as conn:
            return self._rollback_target(conn, read_champion(conn))

    def rollback(
        self,
        *,
        expected_epoch: int,
        actor: str,
        reason: str,
        automatic: bool = False,
        within: Within | None = None,
    ) -> ChampionState:
        """Serves the previous champion again; the current one is marked rejected so that a second rollback
        walks further back instead of bouncing between two versions.

        Raises:
            ChampionMovedError, ChampionPinnedError: as for :meth:`promote`.
            VersionStateError: there is no earlier champion to return to.
        """
        with self._db.tx(lock=PROMOTION_LOCK_KEY, fenced=True) as conn:
            seen = self._check(conn, expected_epoch, actor=actor, automatic=automatic)
            target = self._rollback_target(conn, seen)
            if target is None:
                raise VersionStateError(
                    f"no earlier champion to roll back to from {seen.version_id!r}; promote a version instead"
                )
            new = self._move(
                conn,
                seen,
                target,
                demote_to=VersionStatus.REJECTED,
                actor=actor,
                reason=reason,
                details={"rollback": True},
            )
            if within is not None:
                within(new)
            return new

    def retire(self, *, expected_epoch: int, actor: str, reason: str, within: Within | None = None) -> ChampionState:
        """No version serves any more: the base model does (the champion is marked rejected). For a champion whose
        artifact is unusable when no earlier champion is left to roll back to; the next cycle starts from the base.

        Raises:
            ChampionMovedError: the epoch is no longer ``expected_epoch``.
        """
        with self._db.tx(lock=PROMOTION_LOCK_KEY, fenced=True) as conn:
            seen = self._check(conn, expected_epoch, actor=actor, automatic=False)
            if seen.version_id is None:
                return seen
            new = self._move(
                conn,
                seen,
                None,
                demote_to=VersionStatus.REJECTED,
                actor=actor,
                reason=reason,
                details={"base_model": True},
            )
            if within is not None:
                within(new)
            return new

    def set_pinned(self, pinned: bool, *, actor: str, reason: str) -> ChampionState:
        """Pins (freezes against automatic promotion) or unpins the champion; audited."""
        now = self._clock.now()
        with self._db.tx(lock=PROMOTION_LOCK_KEY, fenced=True) as conn:
            seen = read_champion(conn)
            conn.execute(update(_C).where(_C.c.id == 1).values(pinned=pinned, updated_at=now))
            _audit.append(
                conn,
                at=now,
                kind=AuditKind.PIN if pinned else AuditKind.UNPIN,
                actor=actor,
                reason=reason,
                version_id=seen.version_id,
                epoch=seen.epoch,
            )
            return read_champion(conn)

    # -- internals -------------------------------------------------------------------------------------------

    @staticmethod
    def _check(conn: Connection, expected_epoch: int, *, actor: str, automatic: bool) -> ChampionState:
        seen = read_champion(conn)
        if seen.epoch != expected_epoch:
            raise ChampionMovedError(
                f"{actor} expected champion epoch {expected_epoch}, but it is {seen.epoch} (serving "
                f"{seen.version_id!r}); re-read the champion and decide again"
            )
        if automatic and seen.pinned:
            raise ChampionPinnedError(
                f"champion {seen.version_id!r} is pinned; automatic moves are refused until `qtha unpin`"
            )
        return seen

    @staticmethod
    def _check_target(target: ModelVersion, seen: ChampionState) -> None:
        if target.id == seen.version_id:
            raise VersionStateError(f"version {target.id!r} is already the champion")
        if target.status is VersionStatus.REJECTED or target.pruned:
            why = "rejected" if target.status is VersionStatus.REJECTED else "pruned (artifact deleted)"
            raise VersionStateError(
                f"version {target.id!r} is {why} and cannot serve; promote another version"
            )

    def _move(
        self,
        conn: Connection,
        seen: ChampionState,
        target: ModelVersion | None,
        *,
        demote_to: VersionStatus,
        actor: str,
        reason: str,
        details: dict[str, Any],
    ) -> ChampionState:
        """The epoch CAS, the demotion of the old champion, the promotion of ``target`` (None: the base model
        serves) and the serve entry, in the caller's transaction."""
        now = self._clock.now()
        target_id = target.id if target is not None else None
        moved = conn.execute(
            update(_C)
            .where(_C.c.id == 1, _C.c.epoch == seen.epoch)
            .values(version_id=target_id, epoch=seen.epoch + 1, updated_at=now)
        )
        if moved.rowcount != 1:  # unreachable under the lock; kept as the CAS's own guarantee
            raise ChampionMovedError(f"champion epoch moved from {seen.epoch} during {actor}'s move; retry")
        if seen.version_id is not None:
            conn.execute(
                update(_V)
                .where(_V.c.id == seen.version_id, _V.c.status == VersionStatus.CHAMPION.value)
                .values(status=demote_to.value)
            )
        if target_id is not None:
            conn.execute(
                update(_V)
                .where(_V.c.id == target_id)
                .values(status=VersionStatus.CHAMPION.value, was_champion=True)
            )
        _audit.append(
            conn,
            at=now,
            kind=AuditKind.SERVE,
            actor=actor,
            reason=reason,
            version_id=target_id,
            previous_id=seen.version_id,
            epoch=seen.epoch + 1,
            details=details,
        )
        return read_champion(conn)

    def _close_cycle(self, conn: Connection, cycle_id: int, version_id: str, epoch: int) -> None:
        now = self._clock.now()
        closed = conn.execute(
            update(_CY)
            .where(_CY.c.id == cycle_id, _CY.c.state == CycleState.PROMOTE.value)
            .values(
                state=CycleState.PROMOTED.value,
                running=None,
                updated_at=now,
                finished_at=now,
                outcome=f"promoted {version_id} at epoch {epoch}",
            )
        )
        if closed.rowcount != 1:
            raise StaleCycleError(
                f"cycle {cycle_id} is not in state promote; it cannot promote {version_id!r}"
            )

    @staticmethod
    def _rollback_target(conn: Connection, seen: ChampionState) -> ModelVersion | None:
        serves = conn.execute(
            select(_A.c.version_id).where(_A.c.kind == AuditKind.SERVE.value).order_by(_A.c.seq.desc())
        ).scalars()
        for version_id in serves:
            if version_id is None or version_id == seen.version_id:
                continue  # None: the base model served (Champion.retire)
            candidate = read_version(conn, version_id)
            if candidate.status is not VersionStatus.REJECTED and not candidate.pruned:
                return candidate
        return None
