"""The usage log and its feedback: every request ``qtha serve`` answered, for the daemon to learn from.

The log is capped twice, by age and by size (the sum of each record's ``size_bytes``); :meth:`Usage.prune`
deletes the oldest records first, with their feedback, in one transaction. The server writes records in
batches (one transaction per batch), so a burst of requests costs one commit, not one per request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from agent.clock import Clock
from agent.store import _convert
from agent.store._db import Database
from agent.store._tables import FeedbackRow, UsageRow
from agent.store.errors import NotFoundError
from agent.store.records import Feedback, UsageRecord

_U = UsageRow.__table__  # type: ignore[attr-defined]
_F = FeedbackRow.__table__  # type: ignore[attr-defined]

# Rows read per step while finding where the size cap cuts.
_PRUNE_CHUNK = 1000


def record_size(record: UsageRecord) -> int:
    """The bytes a record counts against the size cap: its JSON serialization's length."""
    return len(json.dumps(asdict(record), default=str, ensure_ascii=False).encode())


class Usage:
    """The ``usage_log`` and ``usage_feedback`` tables."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def record_many(self, records: Sequence[UsageRecord]) -> int:
        """Appends ``records`` in one transaction; returns how many.

        A request id already logged is skipped (a retried batch after a lost commit acknowledgement).
        """
        if not records:
            return 0
        with self._db.tx() as conn:
            ids = [r.request_id for r in records]
            seen = set(conn.execute(select(_U.c.request_id).where(_U.c.request_id.in_(ids))).scalars())
            rows = []
            for r in records:
                if r.request_id in seen:
                    continue
                seen.add(r.request_id)
                row = asdict(r)
                row["messages"] = [dict(m) for m in r.messages]
                row["answers"] = list(r.answers)
                row["finish_reasons"] = list(r.finish_reasons)
                row["sampling"] = dict(r.sampling)
                row["size_bytes"] = record_size(r)
                rows.append(row)
            if rows:
                conn.execute(insert(_U), rows)
            return len(rows)

    def get(self, request_id: str) -> UsageRecord:
        """The record of ``request_id``.

        Raises:
            NotFoundError: no such request (never served, pruned, or the log is switched off).
        """
        with self._db.tx(write=False) as conn:
            row = conn.execute(select(_U).where(_U.c.request_id == request_id)).mappings().first()
        if row is None:
            raise NotFoundError(
                f"no usage record for request {request_id!r}: unknown, older than the retention, or not logged"
            )
        return _convert.usage(row)

    def list(
        self,
        *,
        version_id: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[UsageRecord]:
        """Records oldest first; ``limit`` keeps the newest ``limit``."""
        query = select(_U).order_by(_U.c.seq.desc())
        if version_id is not None:
            query = query.where(_U.c.version_id == version_id)
        if since is not None:
            query = query.where(_U.c.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._db.tx(write=False) as conn:
            return [_convert.usage(r) for r in conn.execute(query).mappings()][::-1]

    def add_feedback(
        self, request_id: str, *, score: float | None = None, correct_answer: str | None = None
    ) -> Feedback:
        """Records feedback on a logged request, attributed to the version that answered it.

        Raises:
            ValueError: neither ``score`` nor ``correct_answer`` given.
            NotFoundError: no usage record for ``request_id``.
        """
        if score is None and correct_answer is None:
            raise ValueError("feedback needs a score or a correct_answer")
        with self._db.tx() as conn:
            version_id = conn.execute(
                select(_U.c.version_id).where(_U.c.request_id == request_id)
            ).scalar_one_or_none()
            if version_id is None:
                raise NotFoundError(
                    f"no usage record for request {request_id!r}: unknown, older than the retention, or not "
                    "logged; give the id from the response's x-request-id header"
                )
            result = conn.execute(
                insert(_F).values(
                    request_id=request_id,
                    version_id=version_id,
                    at=self._clock.now(),
                    score=score,
                    correct_answer=correct_answer,
                )
            )
            row = conn.execute(select(_F).where(_F.c.id == result.inserted_primary_key[0])).mappings().one()
            return _convert.feedback(row)

    def feedback(
        self, *, request_id: str | None = None, version_id: str | None = None, since: datetime | None = None
    ) -> list[Feedback]:
        """Feedback oldest first, optionally of one request or one version, or since a time."""
        query = select(_F).order_by(_F.c.id)
        if request_id is not None:
            query = query.where(_F.c.request_id == request_id)
        if version_id is not None:
            query = query.where(_F.c.version_id == version_id)
        if since is not None:
            query = query.where(_F.c.at >= since)
        with self._db.tx(write=False) as conn:
            return [_convert.feedback(r) for r in conn.execute(query).mappings()]

    def size_bytes(self) -> int:
        """The log's size as the cap counts it."""
        with self._db.tx(write=False) as conn:
            return int(conn.execute(select(func.coalesce(func.sum(_U.c.size_bytes), 0))).scalar_one())

    def prune(self, *, before: datetime, max_bytes: int) -> int:
        """Deletes records older than ``before``, then the oldest until the log fits ``max_bytes``; their
        feedback goes with them. Returns how many records were deleted."""
        with self._db.tx() as conn:
            deleted = int(conn.execute(delete(_U).where(_U.c.at < before)).rowcount)
            total = int(conn.execute(select(func.coalesce(func.sum(_U.c.size_bytes), 0))).scalar_one())
            excess, cut, after = total - max_bytes, None, 0
            while excess > 0:
                chunk = conn.execute(
                    select(_U.c.seq, _U.c.size_bytes).where(_U.c.seq > after).order_by(_U.c.seq).limit(_PRUNE_CHUNK)
                ).all()
                if not chunk:
                    break
                for seq, size in chunk:
                    cut, excess = seq, excess - int(size)
                    if excess <= 0:
                        break
                after = chunk[-1][0]
            if cut is not None:
                deleted += int(conn.execute(delete(_U).where(_U.c.seq <= cut)).rowcount)
            if deleted:
                conn.execute(delete(_F).where(_F.c.request_id.not_in(select(_U.c.request_id))))
            return deleted
