"""The append-only audit log: who or what moved the champion, when and why (the database refuses edits)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from agent.store import _convert
from agent.store._db import TableAccess
from agent.store._tables import AuditRow
from agent.store.records import AuditEntry, AuditKind, ServingInterval

_T = AuditRow.__table__  # type: ignore[attr-defined]


def append(
    conn: Connection,
    *,
    at: datetime,
    kind: AuditKind,
    actor: str,
    reason: str,
    version_id: str | None = None,
    previous_id: str | None = None,
    epoch: int | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Appends one entry inside the caller's transaction (so it commits or vanishes with the change it logs)."""
    conn.execute(
        insert(_T).values(
            at=at,
            kind=kind.value,
            version_id=version_id,
            previous_id=previous_id,
            epoch=epoch,
            actor=actor,
            reason=reason,
            details=dict(details or {}),
        )
    )


class Audit(TableAccess):
    """Read access to the audit log (entries are written by the operations they record)."""

    def note(
        self,
        kind: AuditKind,
        *,
        actor: str,
        reason: str,
        version_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Appends an entry that is not part of another change (e.g. an artifact was quarantined).

        Raises:
            ValueError: ``kind`` is SERVE (serve entries are written only by champion moves, with their epoch).
        """
        if kind is AuditKind.SERVE:
            raise ValueError("serve entries are written by Champion.promote/rollback only, with their epoch")
        with self._db.tx() as conn:
            append(
                conn,
                at=self._clock.now(),
                kind=kind,
                actor=actor,
                reason=reason,
                version_id=version_id,
                details=details,
            )

    def entries(self, *, kind: AuditKind | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Entries oldest first; with ``limit``, the newest ``limit`` of them (still oldest first)."""
        query = select(_T).order_by(_T.c.seq.desc())
        if kind is not None:
            query = query.where(_T.c.kind == kind.value)
        if limit is not None:
            query = query.limit(limit)
        with self._db.tx(write=False) as conn:
            rows = [_convert.audit(r) for r in conn.execute(query).mappings()]
        return rows[::-1]

    def serving_history(self) -> list[ServingInterval]:
        """Which version served from when to when, derived from the append-only serve entries."""
        serves = self.entries(kind=AuditKind.SERVE)
        intervals = []
        for i, entry in enumerate(serves):
            until = serves[i + 1].at if i + 1 < len(serves) else None
            assert entry.epoch is not None  # serve rows always carry their epoch (version None: the base model)
            intervals.append(
                ServingInterval(
                    version_id=entry.version_id,
                    epoch=entry.epoch,
                    served_from=entry.at,
                    served_until=until,
                    moved_by=entry.actor,
                    reason=entry.reason,
                )
            )
        return intervals
