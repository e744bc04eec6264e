"""The candidates of a cycle that trains several at once (schema v4): begun with the cycle, owner-checked
updates, and the migration of a v3 database."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.store import CandidateState, CycleState, NotFoundError, StaleCycleError, Store, open_store
from agent.store import _migrations as migrations
from agent.store._db import Database, create_store_engine
from agent.store._migrations import STEPS


def _begin(store: Store, count: int, owner: str = "proc-a") -> int:
    specs = [({"steps": 10 + slot}, {"trial": slot}) for slot in range(count)]
    return store.cycles.begin(owner=owner, trigger_reasons=["t"], recipe=specs[0][0], candidates=specs).id


def test_candidates_are_begun_with_their_cycle_and_updated_by_its_owner(store: Store) -> None:
    cycle_id = _begin(store, 3)
    rows = store.candidates.of_cycle(cycle_id)
    assert [(c.slot, c.recipe["steps"], c.plan["trial"], c.state) for c in rows] == [
        (1, 10, 0, CandidateState.PLANNED),
        (2, 11, 1, CandidateState.PLANNED),
        (3, 12, 2, CandidateState.PLANNED),
    ]
    trained = store.candidates.update(cycle_id, 2, owner="proc-a", state=CandidateState.TRAINED, version_id="c2")
    assert (trained.state, trained.version_id, trained.outcome) == (CandidateState.TRAINED, "c2", None)
    rejected = store.candidates.update(
        cycle_id, 2, owner="proc-a", state=CandidateState.REJECTED, outcome="outgained", evidence={"p_value": 0.01}
    )
    assert (rejected.version_id, rejected.outcome, dict(rejected.evidence)) == ("c2", "outgained", {"p_value": 0.01})
    with pytest.raises(StaleCycleError):  # another process's write
        store.candidates.update(cycle_id, 1, owner="proc-b", state=CandidateState.FAILED, outcome="x")
    with pytest.raises(NotFoundError):
        store.candidates.update(cycle_id, 9, owner="proc-a", state=CandidateState.FAILED)
    store.cycles.fail(cycle_id, owner="proc-a", error="test")
    with pytest.raises(StaleCycleError):  # a finished cycle's candidates stay as they ended
        store.candidates.update(cycle_id, 1, owner="proc-a", state=CandidateState.CHOSEN)


def test_a_cycle_with_one_candidate_has_no_rows(store: Store) -> None:
    cycle = store.cycles.begin(owner="proc-a", trigger_reasons=["t"], recipe={"steps": 3})
    assert store.candidates.of_cycle(cycle.id) == [] and store.cycles.get(cycle.id).state is CycleState.OBSERVE


def test_a_v3_database_migrates_to_v4_keeping_its_cycles(sqlite_url: str, fake_clock: FakeClock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_store_engine(sqlite_url)
    with monkeypatch.context() as patch:  # what a qtha of schema v3 created
        patch.setattr(migrations, "STEPS", STEPS[:3])
        patch.setattr(migrations, "LATEST_VERSION", 3)
        assert migrations.migrate(Database(engine), fake_clock.now()) == 3
    engine.dispose()
    store = open_store(sqlite_url, clock=fake_clock)
    try:
        assert store.schema_version() == 4
        cycle_id = _begin(store, 2)
        assert len(store.candidates.of_cycle(cycle_id)) == 2
    finally:
        store.close()
