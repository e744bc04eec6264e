"""Cycles: one row per fine-tuning cycle, every state transition committed as a compare-and-swap.

"At most one cycle runs at a time" is a database guarantee: non-terminal rows carry ``running = 1`` under a
UNIQUE constraint, so a second ``begin`` fails even from another process or host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from agent.store import _convert
from agent.store._candidates import insert_candidates
from agent.store._db import TableAccess
from agent.store._tables import CycleRow
from agent.store.errors import CycleAlreadyRunningError, NotFoundError, StaleCycleError
from agent.store.records import NON_TERMINAL_STATES, Cycle, CycleState

_T = CycleRow.__table__  # type: ignore[attr-defined]

# Fields a transition may set besides the state.
_SETTABLE = frozenset({"candidate_id", "parent_id", "champion_epoch_seen", "outcome", "error", "recipe"})


def _read(conn: Connection, cycle_id: int) -> Cycle:
    row = conn.execute(select(_T).where(_T.c.id == cycle_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"cycle {cycle_id} does not exist")
    return _convert.cycle(row)


class Cycles(TableAccess):
    """The ``cycles`` table."""

    def begin(
        self,
        *,
        owner: str,
        trigger_reasons: Sequence[str],
        recipe: Mapping[str, Any] | None = None,
        plan: Mapping[str, Any] | None = None,
        backend: str = "",
        candidates: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]] = (),
    ) -> Cycle:
        """Starts a cycle in state OBSERVE, owned by ``owner``.

        Args:
            candidates: for a cycle that trains several candidates at once, each one's ``(recipe, plan)``,
                recorded in the same transaction (see :class:`~agent.store.Candidates`); empty for one candidate.

        Raises:
            CycleAlreadyRunningError: another cycle is not terminal (names it).
        """
        now = self._clock.now()
        try:
            with self._db.tx(fenced=True) as conn:
                result = conn.execute(
                    insert(_T).values(
                        state=CycleState.OBSERVE.value,
                        running=1,
                        trigger_reasons=list(trigger_reasons),
                        recipe=dict(recipe or {}),
                        plan=dict(plan or {}),
                        backend=backend,
                        started_at=now,
                        updated_at=now,
                        owner=owner,
                        resumes=0,
                    )
                )
                cycle_id = int(result.inserted_primary_key[0])
                insert_candidates(conn, cycle_id, candidates, now)
                return _read(conn, cycle_id)
        except IntegrityError:
            running = self.active()
            what = (
                f"cycle {running.id} ({running.state}, owner {running.owner})" if running else "another cycle"
            )
            raise CycleAlreadyRunningError(
                f"{what} is still running; wait for it to finish (`qtha status` shows its progress); a cycle whose owner died is resumed or failed when the daemon next starts"
            ) from None

    def get(self, cycle_id: int) -> Cycle:
        with self._db.tx(write=False) as conn:
            return _read(conn, cycle_id)

    def active(self) -> Cycle | None:
        """The non-terminal cycle, if any."""
        with self._db.tx(write=False) as conn:
            row = conn.execute(select(_T).where(_T.c.running.is_not(None))).mappings().first()
            return None if row is None else _convert.cycle(row)

    def list(self, *, limit: int | None = None, state: CycleState | None = None) -> list[Cycle]:
        """Cycles newest first."""
        query = select(_T).order_by(_T.c.id.desc())
        if state is not None:
            query = query.where(_T.c.state == state.value)
        if limit is not None:
            query = query.limit(limit)
        with self._db.tx(write=False) as conn:
            return [_convert.cycle(r) for r in conn.execute(query).mappings()]

    def non_terminal(self) -> list[Cycle]:
        """Every cycle not yet terminal (0 or 1 rows by construction)."""
        states = [s.value for s in NON_TERMINAL_STATES]
        with self._db.tx(write=False) as conn:
            rows = conn.execute(select(_T).where(_T.c.state.in_(states)).order_by(_T.c.id)).mappings()
            return [_convert.cycle(r) for r in rows]

    def advance(
        self, cycle_id: int, *, from_state: CycleState, to_state: CycleState, owner: str, **fields: Any
    ) -> Cycle:
        """Commits one transition if the cycle is still in ``from_state`` and owned by ``owner``.

        Args:
            fields: any of candidate_id, parent_id, champion_epoch_seen, outcome, error, recipe.

        Raises:
            StaleCycleError: the cycle moved or was adopted by another owner; stop working on it.
        """
        unknown = set(fields) - _SETTABLE
        if unknown:
            raise TypeError(f"advance() cannot set {sorted(unknown)}; allowed: {sorted(_SETTABLE)}")
        if from_state.terminal:
            raise StaleCycleError(f"cycle {cycle_id} is already {from_state}; terminal cycles do not move")
        now = self._clock.now()
        values: dict[str, Any] = {"state": to_state.value, "updated_at": now, **fields}
        if "recipe" in values:
            values["recipe"] = dict(values["recipe"])
        if to_state.terminal:
            values.update(running=None, finished_at=now)
        with self._db.tx(fenced=True) as conn:
            moved = conn.execute(
                update(_T)
                .where(_T.c.id == cycle_id, _T.c.state == from_state.value, _T.c.owner == owner)
                .values(**values)
            )
            if moved.rowcount != 1:
                current = _read(conn, cycle_id)
                raise StaleCycleError(
                    f"cycle {cycle_id} is {current.state} owned by {current.owner!r}, not {from_state} owned by "
                    f"{owner!r}; another process took it over, stop working on it"
                )
            return _read(conn, cycle_id)

    def fail(self, cycle_id: int, *, owner: str, error: str) -> Cycle:
        """Closes a non-terminal cycle as FAILED with ``error`` (whatever state it was in)."""
        with self._db.tx(fenced=True) as conn:
            current = _read(conn, cycle_id)
        if current.state.terminal:
            return current
        return self.advance(
            cycle_id, from_state=current.state, to_state=CycleState.FAILED, owner=owner, error=error
        )

    def adopt(self, cycle_id: int, *, expected_owner: str | None, owner: str) -> Cycle:
        """Takes over an interrupted cycle (its owner died): sets the owner and counts the resume.

        Raises:
            StaleCycleError: the cycle is terminal or its owner is no longer ``expected_owner``.
        """
        with self._db.tx(fenced=True) as conn:
            moved = conn.execute(
                update(_T)
                .where(_T.c.id == cycle_id, _T.c.running.is_not(None), _owner_is(expected_owner))
                .values(owner=owner, resumes=_T.c.resumes + 1, updated_at=self._clock.now())
            )
            if moved.rowcount != 1:
                raise StaleCycleError(
                    f"cycle {cycle_id} is no longer running under owner {expected_owner!r}; leave it alone"
                )
            return _read(conn, cycle_id)


def _owner_is(owner: str | None) -> Any:
    return _T.c.owner.is_(None) if owner is None else _T.c.owner == owner
