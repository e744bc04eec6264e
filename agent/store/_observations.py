"""Metric samples and policy decisions: what the daemon saw and what it decided, with reasons and evidence."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select

from agent.store import _convert
from agent.store._db import TableAccess
from agent.store._tables import DecisionRow, MetricRow
from agent.store.errors import InvalidSampleError
from agent.store.records import DecisionRecord, MetricSample

_M = MetricRow.__table__  # type: ignore[attr-defined]
_D = DecisionRow.__table__  # type: ignore[attr-defined]
# Same rule as agent.config.MetricName: what the drift detector, PromQL labels and dashboards can name.
_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
_MAX_LABEL = 200


def check_sample(name: object, value: object, labels: Mapping[str, str] | None = None) -> float:
    """The sample's value as a float, or :class:`InvalidSampleError` naming what is wrong.

    A NaN breaks every drift statistic it enters and SQLite stores it as NULL; an infinity poisons the
    detector's running sums for the whole retention window; so only finite values are stored.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSampleError(
            f"metric name {name!r:.80}: use 1-200 printable characters without spaces (e.g. eval_mean)"
        )
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidSampleError(f"metric {name}: value {value!r:.80} is not a number") from None
    if not math.isfinite(number):
        raise InvalidSampleError(f"metric {name}: value {number} is not finite; give a finite number")
    for key, text in (labels or {}).items():
        if not isinstance(key, str) or not _NAME.fullmatch(key) or not isinstance(text, str) or len(text) > _MAX_LABEL:
            raise InvalidSampleError(
                f"metric {name}: label {key!r:.40}={text!r:.40} needs a name without spaces and a value of at "
                f"most {_MAX_LABEL} characters"
            )
    return number


class Metrics(TableAccess):
    """Recorded metric samples (the history that drift detection and dashboards read)."""

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
            InvalidSampleError: a non-finite value, or a bad name or label (see :func:`check_sample`).
        """
        number = check_sample(name, value, labels)
        with self._db.tx() as conn:
            result = conn.execute(
                insert(_M).values(
                    name=name,
                    value=number,
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
        """Stores ``(name, value, labels)`` samples in one transaction; returns how many were stored.

        A measured NaN or infinity (a diverged evaluation, a Prometheus ratio over zero traffic) means "no
        measurement": it is left out rather than failing the whole batch.

        Raises:
            InvalidSampleError: a bad name or label (nothing is stored).
        """
        when = at or self._clock.now()
        rows = []
        for n, v, lab in samples:
            try:
                number = check_sample(n, v, lab)
            except InvalidSampleError:
                if isinstance(v, int | float) and not math.isfinite(v):
                    check_sample(n, 0.0, lab)  # still refuse a bad name or label
                    continue
                raise
            rows.append({"name": n, "value": number, "labels": dict(lab), "at": when, "source": source})
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

    def names(self) -> list[str]:
        """Every sample name recorded (sorted), so a reader can list the series without knowing them."""
        with self._db.tx(write=False) as conn:
            return sorted(str(n) for n in conn.execute(select(_M.c.name).distinct()).scalars())

    def delete_before(self, at: datetime) -> int:
        """Retention: deletes samples older than ``at``; returns how many."""
        with self._db.tx() as conn:
            return int(conn.execute(delete(_M).where(_M.c.at < at)).rowcount)


class Decisions(TableAccess):
    """Every policy decision with its reasons and evidence."""

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
