"""The usage writer: batched commits off the request path, flush for feedback, drops counted, pruning."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry

from agent.serve import ServeMetrics, UsageWriter
from agent.store import Store, UsageRecord


def _record(store: Store, request_id: str, *, days_ago: float = 0, text: str = "hi") -> UsageRecord:
    return UsageRecord(
        request_id=request_id, at=store.clock.now() - timedelta(days=days_ago), version_id="v1", status=200,
        error=None, messages=({"role": "user", "content": text},), answers=("ok",), finish_reasons=("stop",),
        sampling={}, latency_s=0.1, ttft_s=0.01, prompt_tokens=3, completion_tokens=1,
    )


def test_records_are_committed_by_flush_and_old_ones_pruned(serve_store: Store) -> None:
    metrics = ServeMetrics(CollectorRegistry())
    serve_store.usage.record_many([_record(serve_store, "ancient", days_ago=40)])
    writer = UsageWriter(serve_store, metrics, retention_days=30, max_bytes=10**9)
    writer.start()
    for i in range(300):
        writer.submit(_record(serve_store, f"r{i}"))
    assert writer.flush()
    ids = [r.request_id for r in serve_store.usage.list()]
    assert ids == [f"r{i}" for i in range(300)]  # the first batch's prune removed the 40-day-old record
    writer.close()
    assert metrics.value("qtha_serve_usage_dropped_total") == 0.0


def test_a_full_queue_drops_and_counts_instead_of_blocking(serve_store: Store) -> None:
    metrics = ServeMetrics(CollectorRegistry())
    writer = UsageWriter(serve_store, metrics, retention_days=30, max_bytes=10**9, capacity=5)  # not started
    for i in range(8):
        writer.submit(_record(serve_store, f"r{i}"))
    assert metrics.value("qtha_serve_usage_dropped_total") == 3.0
    writer.start()
    writer.close()
    assert len(serve_store.usage.list()) == 5
