"""Live signals per version: the hooks the console reads them through.

A :class:`SignalSource` turns what the store holds into :class:`Series` (one named signal of one version over
time). Two sources exist:

* :class:`MetricSampleSignals` — metric samples labelled ``version=<id>``: the daemon's own evaluations
  (``eval_mean``, ``eval_loss``, …), samples pushed with ``qtha observe --label version=…`` and whatever the
  closed loop records per version (its live signals use the same label);
* :class:`UsageSignals` — the server's usage log (``store.usage``: one record per served request, with feedback),
  bucketed per version: requests, error rate, median latency, mean feedback score. It reads only the duck-typed
  ``list(since=..., limit=...)`` and ``feedback(since=...)`` of the usage table, so it works as soon as a store
  has one and is silent before.

The canary's live comparison is the same series restricted to the cycle's candidate and its champion during the
cycle (:func:`canary_series`), plus any decision of a ``canary*`` kind the cycle recorded (shown as evidence).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from agent.store import Cycle, Store

__all__ = [
    "MetricSampleSignals",
    "Series",
    "SignalSource",
    "UsageSignals",
    "canary_series",
    "default_sources",
    "read_series",
]

# Samples that belong to a cycle, not to a serving version (the loss curve draws them).
_NOT_LIVE = frozenset({"train_loss"})


@dataclass(frozen=True, slots=True)
class Series:
    """One signal of one version over time, oldest first."""

    name: str
    version: str
    points: tuple[tuple[datetime, float], ...]
    source: str


class SignalSource(Protocol):
    """Reads live signals per version from the store; never writes."""

    def series(self, store: Store, *, since: datetime | None) -> list[Series]: ...


class MetricSampleSignals:
    """Metric samples that carry a ``version`` label, grouped by (name, version).

    Args:
        max_samples: newest samples read per name (a page must stay quick on a long history).
    """

    def __init__(self, *, max_samples: int = 2000) -> None:
        self.max_samples = max_samples

    def series(self, store: Store, *, since: datetime | None) -> list[Series]:
        found: list[Series] = []
        for name in store.metrics.names():
            if name in _NOT_LIVE:
                continue
            grouped: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
            for sample in store.metrics.samples(name, since=since, limit=self.max_samples):
                version = sample.labels.get("version")
                if version and math.isfinite(sample.value):
                    grouped[version].append((sample.at, sample.value))
            found += [
                Series(name, v, tuple(points), "metric samples") for v, points in sorted(grouped.items())
            ]
        return found


class UsageSignals:
    """The server's usage log per version, in time buckets.

    Args:
        bucket: the width of one point (requests are counted, latencies and scores summarised per bucket).
        max_records: newest usage records read.
    """

    def __init__(self, *, bucket: timedelta = timedelta(minutes=5), max_records: int = 20000) -> None:
        self.bucket = bucket
        self.max_records = max_records

    def series(self, store: Store, *, since: datetime | None) -> list[Series]:
        usage = getattr(store, "usage", None)
        if usage is None:  # a store without the server's tables: nothing served yet
            return []
        requests: dict[tuple[str, datetime], list[Any]] = defaultdict(list)
        for record in usage.list(since=since, limit=self.max_records):
            requests[(record.version_id, self._bucket(record.at))].append(record)
        scores: dict[tuple[str, datetime], list[float]] = defaultdict(list)
        for item in usage.feedback(since=since):
            if item.score is not None:
                scores[(item.version_id, self._bucket(item.at))].append(float(item.score))
        out: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
        for (version, at), records in sorted(requests.items()):
            out[("serve_requests", version)].append((at, float(len(records))))
            errors = sum(1 for r in records if int(r.status) != 200)
            out[("serve_error_rate", version)].append((at, errors / len(records)))
            latencies = [float(r.latency_s) for r in records if int(r.status) == 200]
            if latencies:
                out[("serve_latency_p50_s", version)].append((at, statistics.median(latencies)))
        for (version, at), values in sorted(scores.items()):
            out[("serve_feedback_score", version)].append((at, statistics.fmean(values)))
        return [Series(n, v, tuple(points), "usage log") for (n, v), points in sorted(out.items())]

    def _bucket(self, at: datetime) -> datetime:
        width = self.bucket.total_seconds()
        return datetime.fromtimestamp(math.floor(at.timestamp() / width) * width, tz=at.tzinfo)


def default_sources() -> tuple[SignalSource, ...]:
    return (MetricSampleSignals(), UsageSignals())


def read_series(store: Store, sources: Iterable[SignalSource], *, since: datetime | None) -> list[Series]:
    """Every source's series, sorted by name then version."""
    found = [s for source in sources for s in source.series(store, since=since)]
    return sorted(found, key=lambda s: (s.name, s.version))


def canary_series(series: Sequence[Series], cycle: Cycle, *, until: datetime) -> list[Series]:
    """The live signals of the cycle's candidate and of the champion it was compared with, during the cycle."""
    versions = {v for v in (cycle.candidate_id, cycle.parent_id) if v}
    end = cycle.finished_at or until
    picked = []
    for s in series:
        if s.version not in versions:
            continue
        points = tuple(p for p in s.points if cycle.started_at <= p[0] <= end)
        if points:
            picked.append(Series(s.name, s.version, points, s.source))
    return picked
