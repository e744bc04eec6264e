"""Metric samples and policy decisions: what the daemon saw and what it decided, with reasons and evidence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select

from agent.clock import Clock
from agent.series import check_sample
from agent.store import _convert
from agent.store._db import Database
from agent.store._tables import DecisionRow, MetricRow
from agent.store.records import DecisionRecord, MetricSample

_M = MetricRow.__table__  # type: ignore[attr-defined]
_D = DecisionRow.__table__  # type: ignore[attr-defined]


class Metrics:
    """Recorded metric samples (the history that drift detection and dashboards read)."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def record(
        self,
        name: str,
        value: float,
        *,
        source: str,
        labels: Mapping[str, str] | None = None,
        at: datetime | None = None,
    ) -> MetricSample:
        """Stores one sample (``at`` defaults to now).

        Raises:
            UnknownSeriesError: the name or a label fits no documented series (:mod:`agent.series`).
        """
        check_sample(name, labels or {})
        with self._db.tx() as conn:
            result = conn.execute(
                insert(_M).values(
                    name=name,
                    value=float(value),
                    labels=dict(labels or {}),
                    at=at or self._clock.now(),
                    source=source,
                )
            )
            row = conn.execute(select(_M).where(_M.c.id == result.inserted_primary_key[0])).mappings().one()
            return _convert.metric(row)

    def record_many(
        self,
        samples: Iterable[tuple[str, float, Mapping[str, str]]],
        *,
        source: str,
        at: datetime | None = None,
    ) -> int:
        """Stores ``(name, value, labels)`` samples in one transaction; returns how many.

        Raises:
            UnknownSeriesError: a sample fits no documented series; none is stored.
        """
        when = at or self._clock.now()
        samples = list(samples)
        for name, _value, labels in samples:
            check_sample(name, labels)
        rows = [
            {"name": n, "value": float(v), "labels": dict(lab), "at": when, "source": source}
            for n, v, lab in samples
        ]
        if rows:
            with self._db.tx() as conn:
                conn.execute(insert(_M), rows)
        return len(rows)

    def samples(
        self,
        name: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[MetricSample]:
        """Samples of ``name`` oldest first; ``labels`` keeps samples whose labels include these pairs;
        ``limit`` keeps the newest ``limit``."""
        query = select(_M).where(_M.c.name == name).order_by(_M.c.at.desc(), _M.c.id.desc())
        if since is not None:
            query = query.where(_M.c.at >= since)
        if until is not None:
            query = query.where(_M.c.at < until)
        with self._db.tx(write=False) as conn:
            found = [_convert.metric(r) for r in conn.execute(query).mappings()]
        if labels:
            found = [s for s in found if all(s.labels.get(k) == v for k, v in labels.items())]
        if limit is not None:
            found = found[:limit]
        return found[::-1]

    def delete_before(self, at: datetime) -> int:
        """Retention: deletes samples older than ``at``; returns how many."""
        with self._db.tx() as conn:
            return int(conn.execute(delete(_M).where(_M.c.at < at)).rowcount)


class Decisions:
    """Every policy decision with its reasons and evidence."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def record(
        self,
        kind: str,
        action: str,
        *,
        reasons: Sequence[Any] = (),
        evidence: Mapping[str, Any] | None = None,
        cycle_id: int | None = None,
    ) -> DecisionRecord:
        """Stores one decision (``kind``: trigger, recipe, promotion, …); ``reasons`` are JSON values."""
        with self._db.tx() as conn:
            result = conn.execute(
                insert(_D).values(
                    kind=kind,
                    action=action,
                    reasons=list(reasons),
                    evidence=dict(evidence or {}),
                    at=self._clock.now(),
                    cycle_id=cycle_id,
                )
            )
            row = conn.execute(select(_D).where(_D.c.id == result.inserted_primary_key[0])).mappings().one()
            return _convert.decision(row)

    def list(
        self, *, kind: str | None = None, cycle_id: int | None = None, limit: int | None = None
    ) -> list[DecisionRecord]:
        """Decisions oldest first; ``limit`` keeps the newest ``limit``."""
        query = select(_D).order_by(_D.c.id.desc())
        if kind is not None:
            query = query.where(_D.c.kind == kind)
        if cycle_id is not None:
            query = query.where(_D.c.cycle_id == cycle_id)
        if limit is not None:
            query = query.limit(limit)
        with self._db.tx(write=False) as conn:
            return [_convert.decision(r) for r in conn.execute(query).mappings()][::-1]
