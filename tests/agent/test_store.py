"""The store on SQLite and on a real PostgreSQL server: records, CAS promotion, audit, cycles, leases."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from agent.clock import FakeClock
from agent.store import (
    LATEST_VERSION,
    AuditKind,
    ChampionMovedError,
    ChampionPinnedError,
    CycleAlreadyRunningError,
    CycleState,
    DatabaseUnavailableError,
    DatabaseUrlError,
    InvalidSampleError,
    LeaseHeldError,
    NotFoundError,
    SchemaTooNewError,
    StaleCycleError,
    StaleEpochError,
    Store,
    VersionStateError,
    VersionStatus,
    open_store,
)


def _add(store: Store, version_id: str, sha: str = "ab" * 32, **kw: object) -> None:
    store.versions.add(
        version_id,
        base_fingerprint="base-1",
        adapter_kind="qtha",
        artifact_path=f"versions/{version_id}",
        sha256=sha,
        **kw,  # type: ignore[arg-type]
    )


def _champions(store: Store) -> list[str]:
    return [v.id for v in store.versions.list(status=VersionStatus.CHAMPION)]


# -- schema -------------------------------------------------------------------------------------------------


def test_fresh_database_is_migrated_and_seeded(store: Store) -> None:
    assert store.schema_version() == LATEST_VERSION == 4
    champion = store.champion.get()
    assert (champion.version_id, champion.epoch, champion.pinned) == (None, 0, False)
    assert store.leases.get().epoch == 0 and store.leases.get().holder is None


def test_reopening_does_not_migrate_twice(store_url: str, fake_clock: FakeClock) -> None:
    first = open_store(store_url, clock=fake_clock)
    _add(first, "v1")
    first.close()
    second = open_store(store_url, clock=fake_clock)
    assert second.schema_version() == LATEST_VERSION and [v.id for v in second.versions.list()] == ["v1"]
    second.close()


def test_newer_schema_is_refused_with_a_clear_message(store_url: str, fake_clock: FakeClock) -> None:
    open_store(store_url, clock=fake_clock).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO schema_version (version, applied_at) VALUES (7, :t)"), {"t": datetime.now()}
        )
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match=r"schema version 7 is newer .* \(up to 4\); upgrade qtha"):
        open_store(store_url, clock=fake_clock)


def test_v2_moves_the_planners_bookkeeping_out_of_the_recipe_and_marks_held_cycles(
    store_url: str, fake_clock: FakeClock
) -> None:
    store = open_store(store_url, clock=fake_clock)
    held = store.cycles.begin(owner="o", trigger_reasons=["x"], recipe={"steps": 3})
    store.cycles.advance(held.id, from_state=CycleState.OBSERVE, to_state=CycleState.FAILED, owner="o")
    store.close()
    # Back to a v1 database: no plan column, bookkeeping inside the recipe, a held cycle stored as rejected.
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE cycles DROP COLUMN plan"))
        conn.execute(text("DELETE FROM schema_version WHERE version >= 2"))
        conn.execute(text("DROP TABLE cycle_candidates"))
        conn.execute(text("DROP TABLE usage_feedback"))
        conn.execute(text("DROP TABLE usage_log"))
        conn.execute(
            text("UPDATE cycles SET state = 'rejected', outcome = 'held for an operator: x', recipe = :r"),
            {"r": json.dumps({"steps": 3, "_trial": 4, "_planned_cpu_s": 90.0, "_cpu_calibration": 2.0})},
        )
    engine.dispose()
    store = open_store(store_url, clock=fake_clock)
    cycle = store.cycles.get(held.id)
    assert store.schema_version() == LATEST_VERSION
    assert dict(cycle.recipe) == {"steps": 3}
    assert dict(cycle.plan) == {"trial": 4, "planned_cpu_s": 90.0, "cpu_calibration": 2.0, "source": "learner"}
    assert cycle.state is CycleState.HELD and cycle.state.terminal
    store.close()


def _open_concurrently(url: str, clock: FakeClock, n: int = 3) -> tuple[list[Store], list[BaseException]]:
    """``n`` threads open the store at once; the stores opened and the errors raised."""
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(open_store(url, clock=clock))
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stores, errors


def test_concurrent_first_start_ups_migrate_once(store_url: str, fake_clock: FakeClock) -> None:
    stores, errors = _open_concurrently(store_url, fake_clock)
    assert errors == [] and len(stores) == 3
    with stores[0].engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalars().all() == [1, 2, 3, 4]
        assert conn.execute(text("SELECT count(*) FROM champion")).scalar() == 1
    for s in stores:
        s.close()


def test_migrated_schema_matches_the_table_definitions(store: Store) -> None:
    from agent.store._tables import METADATA

    inspector = inspect(store.engine)
    for table in METADATA.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == {c.name for c in table.columns}, f"{table.name}: add a migration step"


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(sqlite_store: Store) -> None:
    with sqlite_store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    with pytest.raises(Exception, match="FOREIGN KEY"), sqlite_store.engine.begin() as conn:
        conn.execute(text("UPDATE champion SET version_id = 'no-such-version'"))


# -- versions -----------------------------------------------------------------------------------------------


def test_version_round_trips_as_a_frozen_record(store: Store, fake_clock: FakeClock) -> None:
    store.versions.add(
        "v1",
        base_fingerprint="smollm2-sha",
        adapter_kind="qtha",
        adapter_config={"qubits": 4, "layers": 2},
        artifact_path="versions/v1",
        sha256="0" * 64,
        metrics={"loss": 1.25},
        cycle_id=None,
    )
    got = store.versions.get("v1")
    assert got.adapter_config == {"qubits": 4, "layers": 2} and got.metrics == {"loss": 1.25}
    assert got.status is VersionStatus.CANDIDATE and got.created_at == fake_clock.now()
    assert got.created_at.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.status = VersionStatus.CHAMPION  # type: ignore[misc]
    with pytest.raises(TypeError):
        got.metrics["loss"] = 0.0  # type: ignore[index]


def test_add_is_idempotent_for_the_same_hash_and_refuses_another(store: Store) -> None:
    _add(store, "v1", sha="11" * 32)
    _add(store, "v1", sha="11" * 32)
    assert len(store.versions.list()) == 1
    with pytest.raises(VersionStateError, match="already exists with sha256 111111111111"):
        _add(store, "v1", sha="22" * 32)


def test_unknown_version_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match="'nope' does not exist"):
        store.versions.get("nope")
    assert store.versions.find("nope") is None


# -- champion: promotion CAS, pin, rollback, audit ------------------------------------------------------------


def test_promotion_is_a_cas_on_the_epoch(store: Store) -> None:
    _add(store, "v1")
    _add(store, "v2")
    first = store.champion.promote("v1", expected_epoch=0, actor="bootstrap", reason="first model")
    assert (first.version_id, first.epoch) == ("v1", 1)
    with pytest.raises(ChampionMovedError, match="expected champion epoch 0, but it is 1"):
        store.champion.promote("v2", expected_epoch=0, actor="cycle 2", reason="better")
    assert _champions(store) == ["v1"]
    second = store.champion.promote("v2", expected_epoch=1, actor="cycle 2", reason="better")
    assert (second.version_id, second.epoch) == ("v2", 2)
    assert _champions(store) == ["v2"]
    assert store.versions.get("v1").status is VersionStatus.RETIRED
    assert store.versions.get("v1").was_champion and store.versions.get("v2").was_champion


def test_failing_within_callback_moves_nothing(store: Store) -> None:
    _add(store, "v1")

    def explode(_state: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.champion.promote("v1", expected_epoch=0, actor="t", reason="r", within=explode)
    assert store.champion.get().epoch == 0 and _champions(store) == []
    assert store.audit.entries() == []


def test_pin_refuses_automatic_promotion_but_not_an_operator(store: Store) -> None:
    for v in ("v1", "v2", "v3"):
        _add(store, v)
    store.champion.promote("v1", expected_epoch=0, actor="bootstrap", reason="first")
    store.champion.set_pinned(True, actor="operator alice", reason="freeze for demo")
    with pytest.raises(ChampionPinnedError, match="'v1' is pinned"):
        store.champion.promote("v2", expected_epoch=1, actor="cycle", reason="r", automatic=True)
    moved = store.champion.promote("v3", expected_epoch=1, actor="operator alice", reason="manual")
    assert moved.version_id == "v3" and moved.pinned
    store.champion.set_pinned(False, actor="operator alice", reason="done")
    store.champion.promote("v2", expected_epoch=2, actor="cycle", reason="r", automatic=True)
    kinds = [e.kind for e in store.audit.entries()]
    assert kinds == [AuditKind.SERVE, AuditKind.PIN, AuditKind.SERVE, AuditKind.UNPIN, AuditKind.SERVE]


def test_rejected_or_current_versions_cannot_be_promoted(store: Store) -> None:
    _add(store, "v1")
    _add(store, "bad")
    store.champion.promote("v1", expected_epoch=0, actor="t", reason="r")
    store.versions.reject("bad", reason="sha mismatch")
    with pytest.raises(VersionStateError, match="'bad' is rejected"):
        store.champion.promote("bad", expected_epoch=1, actor="t", reason="r")
    with pytest.raises(VersionStateError, match="already the champion"):
        store.champion.promote("v1", expected_epoch=1, actor="t", reason="r")
    with pytest.raises(VersionStateError, match="champion and cannot be rejected"):
        store.versions.reject("v1", reason="x")


def test_rollback_walks_back_through_earlier_champions(store: Store, fake_clock: FakeClock) -> None:
    for i, v in enumerate(("a", "b", "c")):
        _add(store, v)
        store.champion.promote(v, expected_epoch=i, actor="cycle", reason=f"promote {v}")
        fake_clock.advance(60)
    assert store.champion.rollback_target().id == "b"  # type: ignore[union-attr]
    state = store.champion.rollback(expected_epoch=3, actor="operator", reason="c regressed")
    assert (state.version_id, state.epoch) == ("b", 4)
    assert store.versions.get("c").status is VersionStatus.REJECTED
    state = store.champion.rollback(expected_epoch=4, actor="operator", reason="b regressed too")
    assert state.version_id == "a"
    with pytest.raises(VersionStateError, match="no earlier champion to roll back to from 'a'"):
        store.champion.rollback(expected_epoch=5, actor="operator", reason="again")
    assert _champions(store) == ["a"]


def test_serving_history_says_who_served_from_when_to_when(store: Store, fake_clock: FakeClock) -> None:
    t0 = fake_clock.now()
    _add(store, "v1")
    _add(store, "v2")
    store.champion.promote("v1", expected_epoch=0, actor="bootstrap", reason="first")
    fake_clock.advance(3600)
    store.champion.promote("v2", expected_epoch=1, actor="cycle 7", reason="gain 0.04")
    history = store.audit.serving_history()
    assert [(h.version_id, h.epoch, h.moved_by, h.reason) for h in history] == [
        ("v1", 1, "bootstrap", "first"),
        ("v2", 2, "cycle 7", "gain 0.04"),
    ]
    assert history[0].served_from == t0 and history[0].served_until == t0 + timedelta(hours=1)
    assert history[1].served_until is None
    assert store.audit.entries()[1].previous_id == "v1"


def test_audit_log_is_append_only_in_the_database(store: Store) -> None:
    _add(store, "v1")
    store.champion.promote("v1", expected_epoch=0, actor="t", reason="r")
    for statement in ("UPDATE audit_log SET reason = 'forged'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert [e.reason for e in store.audit.entries()] == ["r"]


def test_database_refuses_a_second_champion_row(store: Store) -> None:
    _add(store, "v1")
    _add(store, "v2")
    store.champion.promote("v1", expected_epoch=0, actor="t", reason="r")
    with pytest.raises(Exception, match="(?i)unique"), store.engine.begin() as conn:
        conn.execute(text("UPDATE model_versions SET status = 'champion' WHERE id = 'v2'"))


# -- cycles -------------------------------------------------------------------------------------------------


def test_only_one_cycle_runs_at_a_time(store: Store) -> None:
    first = store.cycles.begin(owner="a", trigger_reasons=["drift"], recipe={"lr": 1e-3}, backend="jax")
    assert first.state is CycleState.OBSERVE and first.trigger_reasons == ("drift",)
    with pytest.raises(CycleAlreadyRunningError, match=f"cycle {first.id} \\(observe, owner a\\) is still"):
        store.cycles.begin(owner="b", trigger_reasons=["manual"])
    store.cycles.fail(first.id, owner="a", error="boom")
    second = store.cycles.begin(owner="b", trigger_reasons=["manual"])
    assert second.id > first.id and store.cycles.active() == second


def test_transitions_are_committed_compare_and_swaps(store: Store, fake_clock: FakeClock) -> None:
    c = store.cycles.begin(owner="me", trigger_reasons=["r"])
    fake_clock.advance(5)
    c = store.cycles.advance(c.id, from_state=CycleState.OBSERVE, to_state=CycleState.PLAN, owner="me")
    assert c.state is CycleState.PLAN and c.updated_at == c.started_at + timedelta(seconds=5)
    with pytest.raises(StaleCycleError, match="is plan owned by 'me', not observe"):
        store.cycles.advance(c.id, from_state=CycleState.OBSERVE, to_state=CycleState.PLAN, owner="me")
    with pytest.raises(StaleCycleError):
        store.cycles.advance(c.id, from_state=CycleState.PLAN, to_state=CycleState.TRAIN, owner="other")
    c = store.cycles.advance(
        c.id, from_state=CycleState.PLAN, to_state=CycleState.REJECTED, owner="me", outcome="no gain"
    )
    assert c.state.terminal and c.finished_at is not None and c.outcome == "no gain"
    assert store.cycles.active() is None and store.cycles.non_terminal() == []


def test_adopting_an_orphaned_cycle_changes_owner_once(store: Store) -> None:
    c = store.cycles.begin(owner="dead-process", trigger_reasons=["r"])
    adopted = store.cycles.adopt(c.id, expected_owner="dead-process", owner="new-process")
    assert adopted.owner == "new-process" and adopted.resumes == 1
    with pytest.raises(StaleCycleError, match="no longer running under owner 'dead-process'"):
        store.cycles.adopt(c.id, expected_owner="dead-process", owner="third")


def test_promotion_closes_its_cycle_in_the_same_transaction(store: Store) -> None:
    _add(store, "v1")
    c = store.cycles.begin(owner="me", trigger_reasons=["r"])
    for a, b in [("observe", "plan"), ("plan", "train"), ("train", "validate"), ("validate", "promote")]:
        c = store.cycles.advance(c.id, from_state=CycleState(a), to_state=CycleState(b), owner="me")
    store.champion.promote("v1", expected_epoch=0, actor=f"cycle {c.id}", reason="r", cycle_id=c.id)
    closed = store.cycles.get(c.id)
    assert closed.state is CycleState.PROMOTED and closed.outcome == "promoted v1 at epoch 1"
    _add(store, "v2")
    with pytest.raises(StaleCycleError):  # a closed cycle cannot promote again; nothing moves
        store.champion.promote("v2", expected_epoch=1, actor="x", reason="r", cycle_id=c.id)
    assert store.champion.get().version_id == "v1"


# -- leader lease -------------------------------------------------------------------------------------------


def test_lease_has_one_holder_and_a_growing_epoch(store: Store, fake_clock: FakeClock) -> None:
    a = store.leases.acquire("host-a", ttl_s=30)
    assert (a.holder, a.epoch) == ("host-a", 1)
    with pytest.raises(LeaseHeldError, match="held by 'host-a' \\(epoch 1\\)"):
        store.leases.acquire("host-b", ttl_s=30)
    fake_clock.advance(20)
    a = store.leases.renew(a, ttl_s=30)
    fake_clock.advance(20)  # 40 s after acquiring, but renewed at 20 s: still held
    with pytest.raises(LeaseHeldError):
        store.leases.acquire("host-b", ttl_s=30)
    fake_clock.advance(11)
    b = store.leases.acquire("host-b", ttl_s=30)
    assert (b.holder, b.epoch) == ("host-b", 2)
    with pytest.raises(StaleEpochError, match="epoch 1 of 'host-a' is stale"):
        store.leases.renew(a, ttl_s=30)
    with pytest.raises(StaleEpochError):
        store.leases.check(a)
    store.leases.check(b)
    assert store.leases.release(b) and not store.leases.release(b)
    c = store.leases.acquire("host-c", ttl_s=30)
    assert c.epoch == 3


def test_restarted_holder_starts_a_new_term(store: Store) -> None:
    old = store.leases.acquire("node-1", ttl_s=30)
    new = store.leases.acquire("node-1", ttl_s=30)
    assert new.epoch == old.epoch + 1
    with pytest.raises(StaleEpochError):
        store.leases.renew(old, ttl_s=30)


# -- metrics, decisions, commands, overrides ----------------------------------------------------------------


def test_metric_samples_filter_by_time_and_labels(store: Store, fake_clock: FakeClock) -> None:
    t0 = fake_clock.now()
    store.metrics.record("eval_accuracy", 0.5, source="evaluator", labels={"version": "v1"})
    fake_clock.advance(60)
    store.metrics.record_many(
        [("eval_accuracy", 0.6, {"version": "v2"}), ("eval_loss", 1.5, {"version": "v2"})], source="evaluator"
    )
    fake_clock.advance(60)
    store.metrics.record("eval_accuracy", 0.7, source="evaluator", labels={"version": "v1"})
    assert [s.value for s in store.metrics.samples("eval_accuracy")] == [0.5, 0.6, 0.7]
    assert [s.value for s in store.metrics.samples("eval_accuracy", labels={"version": "v1"})] == [0.5, 0.7]
    assert [s.value for s in store.metrics.samples("eval_accuracy", since=t0 + timedelta(seconds=30))] == [
        0.6,
        0.7,
    ]
    assert [s.value for s in store.metrics.samples("eval_accuracy", limit=1)] == [0.7]
    assert store.metrics.names() == ["eval_accuracy", "eval_loss"]  # each name once, sorted
    assert store.metrics.delete_before(t0 + timedelta(seconds=90)) == 3
    assert [s.value for s in store.metrics.samples("eval_accuracy")] == [0.7]
    assert store.metrics.names() == ["eval_accuracy"]


@pytest.mark.parametrize(
    ("name", "value", "labels", "needle"),
    [
        ("eval_mean", float("inf"), None, "not finite"),
        ("eval_mean", float("-inf"), None, "not finite"),
        ("eval_mean", float("nan"), None, "not finite"),
        ("", 1.0, None, "metric name ''"),
        ("eval mean", 1.0, None, "without spaces"),
        ("x" * 201, 1.0, None, "1-200 printable"),
        ("a\u2028b", 1.0, None, "without spaces"),
        ("eval_mean", "high", None, "not a number"),
        ("eval_mean", 1.0, {"": "v"}, "label"),
        ("eval_mean", 1.0, {"k": "v" * 201}, "label"),
    ],
)
def test_a_bad_metric_sample_is_refused_before_it_is_stored(
    store: Store, name: str, value: object, labels: dict | None, needle: str
) -> None:
    with pytest.raises(InvalidSampleError, match=needle):
        store.metrics.record(name, value, source="operator", labels=labels)  # type: ignore[arg-type]
    assert store.metrics.samples(name) == []


def test_record_many_leaves_out_non_finite_measurements(store: Store) -> None:
    V = {"version": "v1"}  # noqa: N806 (eval_* series are per version)
    stored = store.metrics.record_many(
        [("eval_loss", float("nan"), V), ("eval_mean", 0.5, V), ("eval_mean", float("inf"), V)], source="daemon"
    )
    assert stored == 1
    assert [s.value for s in store.metrics.samples("eval_mean")] == [0.5]
    with pytest.raises(InvalidSampleError):
        store.metrics.record_many([("eval_mean", 0.5, V), ("", float("nan"), V)], source="daemon")
    assert len(store.metrics.samples("eval_mean")) == 1


def test_decisions_keep_reasons_and_evidence(store: Store) -> None:
    c = store.cycles.begin(owner="me", trigger_reasons=["r"])
    store.decisions.record("trigger", "run", reasons=["drift", "new data"], evidence={"p": 0.01})
    d = store.decisions.record(
        "promotion", "reject", reasons=["gain < 0.01"], evidence={"gain": 0.0}, cycle_id=c.id
    )
    assert d.reasons == ("gain < 0.01",) and d.evidence == {"gain": 0.0}
    assert [x.action for x in store.decisions.list()] == ["run", "reject"]
    assert [x.id for x in store.decisions.list(cycle_id=c.id)] == [d.id]


def test_commands_are_idempotent_and_applied_once(store: Store, fake_clock: FakeClock) -> None:
    first = store.commands.submit("pin", {"version": "v1"}, key="k-1", actor="operator alice")
    again = store.commands.submit("pin", {"version": "v1"}, key="k-1", actor="operator alice")
    assert again.id == first.id and len(store.commands.pending()) == 1
    with pytest.raises(ValueError, match="key 'k-1' already names command pin"):
        store.commands.submit("rollback", {}, key="k-1", actor="operator alice")
    fake_clock.advance(2)
    applied = store.commands.mark_applied(first.id, ok=True, result="pinned v1")
    assert applied.applied_at == fake_clock.now() and applied.ok and store.commands.pending() == []
    fake_clock.advance(2)
    assert store.commands.mark_applied(first.id, ok=False, result="late").result == "pinned v1"
    assert [e.kind for e in store.audit.entries()] == [AuditKind.COMMAND]


def test_overrides_are_a_small_audited_key_value(store: Store) -> None:
    assert store.overrides.get("paused", False) is False
    store.overrides.set("paused", True, actor="operator", reason="maintenance")
    store.overrides.set("promotion.min_gain", 0.02, actor="operator", reason="stricter")
    assert dict(store.overrides.all()) == {"paused": True, "promotion.min_gain": 0.02}
    assert store.overrides.clear("paused", actor="operator", reason="done")
    assert not store.overrides.clear("paused", actor="operator", reason="done")
    assert dict(store.overrides.all()) == {"promotion.min_gain": 0.02}
    assert [e.details for e in store.audit.entries()] == [
        {"paused": True},
        {"promotion.min_gain": 0.02},
        {"paused": None},
    ]


def test_times_round_trip_as_utc(store: Store) -> None:
    clock = FakeClock(datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC))
    other = Store(store.engine, clock=clock)
    sample = other.metrics.record("live_requests", 1.0, source="t", labels={"version": "v1"})
    assert store.metrics.samples("live_requests")[0].at == sample.at == clock.now()


def test_concurrent_first_opens_of_a_new_sqlite_file_all_succeed(tmp_path: Path, fake_clock: FakeClock) -> None:
    # Switching a new file to WAL is answered "database is locked" without the busy handler while another
    # connection creates it; before the retry, about one round in eight lost a start-up this way.
    for round_ in range(24):
        stores, errors = _open_concurrently(f"sqlite:///{tmp_path / str(round_) / 'qtha.db'}", fake_clock)
        for s in stores:
            s.close()
        assert errors == [], f"round {round_}: {errors}"


def test_a_sample_that_fits_no_documented_series_is_refused(store: Store) -> None:
    from agent.series import UnknownSeriesError

    with pytest.raises(UnknownSeriesError, match="unknown metric series 'x'"):
        store.metrics.record("x", 1.0, source="t")
    with pytest.raises(UnknownSeriesError, match="'live_error_rate' needs label\\(s\\) version"):
        store.metrics.record("live_error_rate", 0.1, source="t", labels={"model": "v1"})
    with pytest.raises(UnknownSeriesError, match="does not take label\\(s\\) instance"):
        store.metrics.record_many(
            [("live_error_rate", 0.1, {"version": "v1"}), ("live_error_rate", 0.2, {"version": "v1", "instance": "a"})],
            source="t",
        )
    assert store.metrics.samples("live_error_rate") == []  # one bad sample refuses the batch: nothing half-stored
    store.metrics.record("live_error_rate", 0.1, source="t", labels={"version": "v1", "window": "w"})
    assert [s.value for s in store.metrics.samples("live_error_rate", labels={"version": "v1"})] == [0.1]


@pytest.mark.parametrize(
    ("url", "error", "needle"),
    [
        ("notaurl", DatabaseUrlError, "not a database URL"),
        ("mysql://user:hunter2@db/x", DatabaseUrlError, "mysql backend is not supported"),
        ("postgresql+nodriver://user:hunter2@db/x", DatabaseUrlError, "driver is not installed"),
        ("postgresql+psycopg://user:hunter2@127.0.0.1:1/x", DatabaseUnavailableError, "cannot reach PostgreSQL at"),
        ("sqlite:////proc/no/such/dir/q.db", DatabaseUnavailableError, "cannot open the SQLite database"),
    ],
)
def test_an_unusable_database_url_fails_with_one_line_naming_the_fix(url: str, error: type, needle: str) -> None:
    with pytest.raises(error) as info:
        open_store(url)
    message = str(info.value)
    assert needle in message and "database.url" in message
    assert "\n" not in message and "hunter2" not in message
