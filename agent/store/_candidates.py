"""The candidates of cycles that train several at once: one row per candidate, begun with its cycle.

Every write is owner-checked against the cycle, like a cycle transition (and fenced by the lease term), so a
process that lost the cycle to another cannot rewrite what the new owner decided.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from agent.store import _convert
from agent.store._db import TableAccess
from agent.store._tables import CandidateRow, CycleRow
from agent.store.errors import NotFoundError, StaleCycleError
from agent.store.records import CandidateState, CycleCandidate

_T = CandidateRow.__table__  # type: ignore[attr-defined]
_CYCLES = CycleRow.__table__  # type: ignore[attr-defined]


def insert_candidates(
    conn: Connection, cycle_id: int, candidates: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], now: datetime
) -> None:
    """Adds ``(recipe, plan)`` as slots 1, 2, … of ``cycle_id`` in state PLANNED (inside the cycle's ``begin``)."""
    for slot, (recipe, plan) in enumerate(candidates, start=1):
        conn.execute(
            insert(_T).values(
                cycle_id=cycle_id,
                slot=slot,
                recipe=dict(recipe),
                plan=dict(plan),
                state=CandidateState.PLANNED.value,
                evidence={},
                updated_at=now,
            )
        )


class Candidates(TableAccess):
    """The ``cycle_candidates`` table."""

    def of_cycle(self, cycle_id: int) -> list[CycleCandidate]:
        """The candidates of ``cycle_id`` by slot (empty for a cycle with one candidate)."""
        query = select(_T).where(_T.c.cycle_id == cycle_id).order_by(_T.c.slot)
        with self._db.tx(write=False) as conn:
            return [_convert.candidate(r) for r in conn.execute(query).mappings()]

    def update(
        self,
        cycle_id: int,
        slot: int,
        *,
        owner: str,
        state: CandidateState,
        version_id: str | None = None,
        outcome: str | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> CycleCandidate:
        """Records what became of one candidate (``version_id``, ``outcome`` and ``evidence`` only when given).

        Raises:
            StaleCycleError: the cycle is finished or owned by another process; stop working on it.
            NotFoundError: the cycle has no such slot.
        """
        values: dict[str, Any] = {"state": state.value, "updated_at": self._clock.now()}
        if version_id is not None:
            values["version_id"] = version_id
        if outcome is not None:
            values["outcome"] = outcome[:8192]
        if evidence is not None:
            values["evidence"] = dict(evidence)
        with self._db.tx(fenced=True) as conn:
            cycle = conn.execute(
                select(_CYCLES.c.owner, _CYCLES.c.running).where(_CYCLES.c.id == cycle_id)
            ).first()
            if cycle is None or cycle.owner != owner or cycle.running is None:
                raise StaleCycleError(
                    f"cycle {cycle_id} is finished or owned by another process, not {owner!r}; its candidates are "
                    "not ours to change"
                )
            moved = conn.execute(update(_T).where(_T.c.cycle_id == cycle_id, _T.c.slot == slot).values(**values))
            if moved.rowcount != 1:
                raise NotFoundError(f"cycle {cycle_id} has no candidate slot {slot}")
            row = conn.execute(select(_T).where(_T.c.cycle_id == cycle_id, _T.c.slot == slot)).mappings().one()
            return _convert.candidate(row)
