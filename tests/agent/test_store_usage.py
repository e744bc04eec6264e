"""The usage log and feedback tables (schema v3): round trip, feedback, retention by age and by size, migration."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from agent.clock import FakeClock
from agent.store import NotFoundError, Store, UsageRecord, open_store
from agent.store import _migrations as migrations
from agent.store._db import Database, create_store_engine
from agent.store._migrations import STEPS
from agent.store._usage import record_size


def _record(store: Store, request_id: str, *, version: str = "v1", answer: str = "hello", **kw: object) -> UsageRecord:
    fields: dict[str, object] = {
        "request_id": request_id,
        "at": store.clock.now(),
        "version_id": version,
        "status": 200,
        "error": None,
        "messages": ({"role": "user", "content": "hi " + request_id},),
        "answers": (answer,),
        "finish_reasons": ("stop",),
        "sampling": {"temperature": 0.0, "max_tokens": 8},
        "latency_s": 0.25,
        "ttft_s": 0.05,
        "prompt_tokens": 12,
        "completion_tokens": 3,
    }
    fields.update(kw)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def test_records_round_trip_and_duplicates_are_skipped(store: Store) -> None:
    first = _record(store, "r1")
    assert store.usage.record_many([first, _record(store, "r2", version="v2")]) == 2
    assert store.usage.record_many([first]) == 0  # a retried batch
    assert store.usage.get("r1") == first
    assert [r.request_id for r in store.usage.list()] == ["r1", "r2"]
    assert [r.request_id for r in store.usage.list(version_id="v2")] == ["r2"]
    assert [r.request_id for r in store.usage.list(limit=1)] == ["r2"]
    with pytest.raises(NotFoundError, match="'nope'"):
        store.usage.get("nope")


def test_feedback_is_attributed_to_the_answering_version(store: Store) -> None:
    store.usage.record_many([_record(store, "r1", version="v7")])
    scored = store.usage.add_feedback("r1", score=0.5)
    corrected = store.usage.add_feedback("r1", correct_answer="19")
    assert (scored.version_id, scored.score, scored.correct_answer) == ("v7", 0.5, None)
    assert (corrected.score, corrected.correct_answer) == (None, "19")
    assert store.usage.feedback(version_id="v7") == [scored, corrected]
    with pytest.raises(NotFoundError, match="x-request-id"):
        store.usage.add_feedback("missing", score=1.0)
    with pytest.raises(ValueError, match="score or a correct_answer"):
        store.usage.add_feedback("r1")


def test_prune_by_age_then_by_size_drops_the_oldest_with_their_feedback(
    store: Store, fake_clock: FakeClock
) -> None:
    store.usage.record_many([_record(store, "old")])
    store.usage.add_feedback("old", score=1.0)
    fake_clock.advance(3600)
    recent = [_record(store, f"r{i}", answer="x" * 100) for i in range(5)]
    store.usage.record_many(recent)
    store.usage.add_feedback("r4", score=0.0)
    assert store.usage.prune(before=fake_clock.now() - timedelta(seconds=60), max_bytes=10**9) == 1
    assert store.usage.feedback(request_id="old") == []
    size = record_size(recent[0])
    assert store.usage.size_bytes() == sum(record_size(r) for r in recent)
    # A cap of two and a half records keeps the newest two.
    assert store.usage.prune(before=fake_clock.now() - timedelta(days=1), max_bytes=int(2.5 * size)) == 3
    assert [r.request_id for r in store.usage.list()] == ["r3", "r4"]
    assert len(store.usage.feedback(request_id="r4")) == 1


def test_a_v2_database_migrates_to_v3_keeping_its_rows(
    sqlite_url: str, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_store_engine(sqlite_url)
    with monkeypatch.context() as patch:  # what a qtha of schema v2 created
        patch.setattr(migrations, "STEPS", STEPS[:2])
        patch.setattr(migrations, "LATEST_VERSION", 2)
        assert migrations.migrate(Database(engine), fake_clock.now()) == 2
    with engine.begin() as conn:
        conn.execute(text("UPDATE champion SET epoch = 5 WHERE id = 1"))
    engine.dispose()
    store = open_store(sqlite_url, clock=fake_clock)
    try:
        assert store.schema_version() == migrations.LATEST_VERSION and store.champion.get().epoch == 5
        store.usage.record_many([_record(store, "r1")])
        assert store.usage.get("r1").answers == ("hello",)
    finally:
        store.close()
    plain = create_engine(sqlite_url)
    with plain.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_feedback")).scalar() == 0
    plain.dispose()
