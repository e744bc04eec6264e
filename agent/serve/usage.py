"""The usage log writer: records go to the store in batches, off the request path, and the log is kept capped.

A request only appends to a bounded in-memory queue; a writer thread commits what has gathered in one
transaction (a burst of requests costs one commit) and prunes the log by age and size now and then. If the queue
is full (the database is slower than the traffic) the record is dropped and counted rather than slowing
answers down. :meth:`UsageWriter.flush` waits until everything queued so far is committed; feedback calls it so
that a request answered a moment ago can be found.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import timedelta

from agent.serve.metrics import ServeMetrics
from agent.store import Store, UsageRecord

__all__ = ["UsageWriter"]

log = logging.getLogger(__name__)

_BATCH = 256
_PRUNE_EVERY_S = 60.0
# Text waiting in memory at most (a record can hold a prompt of up to serve.max_body_bytes).
_MAX_QUEUED_CHARS = 64 * 2**20


def _chars(record: UsageRecord) -> int:
    return sum(len(str(m.get("content", ""))) for m in record.messages) + sum(len(a) for a in record.answers)


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class UsageWriter:
    """Writes :class:`UsageRecord` s to ``store.usage`` from a background thread.

    Args:
        store: the database.
        metrics: counts dropped records.
        retention_days: records older than this are pruned.
        max_bytes: the log's size cap.
        capacity: records that may wait in memory (and at most 64 Mi characters of their text).
    """

    def __init__(
        self,
        store: Store,
        metrics: ServeMetrics,
        *,
        retention_days: float,
        max_bytes: int,
        capacity: int = 10_000,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._retention = timedelta(days=retention_days)
        self._max_bytes = max_bytes
        self._queue: queue.Queue[UsageRecord | _Flush | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._last_prune = -float("inf")
        self._queued_chars = 0
        self._chars_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Queues one record without blocking (dropped and counted when the queue is full)."""
        size = _chars(record)
        with self._chars_lock:
            if self._queued_chars + size > _MAX_QUEUED_CHARS:
                self._metrics.usage_dropped.inc()
                return
            self._queued_chars += size
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._forget(size)
            self._metrics.usage_dropped.inc()

    def _forget(self, size: int) -> None:
        with self._chars_lock:
            self._queued_chars -= size

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until the records queued before this call are committed; False on timeout."""
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commits what is queued and stops the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[UsageRecord] = []
            markers: list[_Flush] = []
            item = self._queue.get()
            while True:
                if item is None:
                    stopping = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    batch.append(item)
                if stopping or len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._commit(batch)
            for marker in markers:
                marker.done.set()
            if time.monotonic() - self._last_prune >= _PRUNE_EVERY_S:
                self._prune()

    def _commit(self, batch: list[UsageRecord]) -> None:
        if not batch:
            return
        self._forget(sum(_chars(r) for r in batch))
        try:
            self._store.usage.record_many(batch)
        except Exception:  # a database outage must not kill the writer; the records are lost and counted
            self._metrics.usage_dropped.inc(len(batch))
            log.warning("could not write %d usage records", len(batch), exc_info=True)

    def _prune(self) -> None:
        self._last_prune = time.monotonic()
        try:
            removed = self._store.usage.prune(
                before=self._store.clock.now() - self._retention, max_bytes=self._max_bytes
            )
        except Exception:  # retried at the next interval
            log.warning("could not prune the usage log", exc_info=True)
            return
        if removed:
            log.info("usage log: pruned %d records (retention and size cap)", removed)
