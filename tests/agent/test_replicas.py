"""Replicas on separate hosts: two daemons' runtimes, each with its own state directory, on one PostgreSQL.

Issue 18's report: the second daemon's start-up reconcile found the champion's files missing from *its* state
directory, marked the good champion REJECTED in the shared database and failed with ``VersionStateError``. A
missing file on a state directory that is not shared means "not here", never "corrupt".
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.cycle.machine import CycleRunner
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime
from agent.daemon.runtime import Runtime
from agent.store import AuditKind, CycleState, StaleEpochError, VersionStatus
from tests.agent.conftest import PostgresServer
from tests.agent.test_daemon import fast_config
from tests.support.standin_trainer import StandinTrainer, mean_gain_gate, standin_recipe

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_hosts(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes ("host a", "host b") with separate state directories and one PostgreSQL database."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "QTHA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    url = postgres.fresh_url()
    runtimes = []
    for host in ("a", "b"):
        config = fast_config(tmp_path / f"host-{host}", database={"url": url}, daemon={"replica_id": host})
        runtimes.append(build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer())))
    try:
        yield runtimes[0], runtimes[1]
    finally:
        for rt in runtimes:
            rt.store.close()


def _publish_and_promote(rt: Runtime, tmp_path: Path, version: str) -> None:
    src = tmp_path / f"src-{version}"
    src.mkdir()
    (src / "adapter.safetensors").write_bytes(version.encode() * 64)
    rt.registry.publish_candidate(version, src, base_fingerprint="base", adapter_kind="qtha")
    rt.registry.promote(version, expected_epoch=rt.store.champion.get().epoch, actor="test", reason="setup")


@pytest.mark.parametrize("versions", [("v1", "v2"), ("v2",)])
def test_a_second_host_without_the_files_leaves_the_good_champion_alone(
    two_hosts: tuple[Runtime, Runtime], tmp_path: Path, versions: tuple[str, ...]
) -> None:
    a, b = two_hosts
    assert a.leadership.tick()
    for version in versions:
        _publish_and_promote(a, tmp_path, version)
    a.leadership.release()
    assert b.leadership.tick()  # host b leads now; its state directory holds no versions
    b.cycles.resume(b)  # start-up: adopt cycles, reconcile, housekeeping
    champion = b.store.champion.get()
    assert champion.version_id == "v2"
    statuses = {v.id: v.status for v in b.store.versions.list()}
    assert statuses == {v: VersionStatus.RETIRED for v in versions[:-1]} | {"v2": VersionStatus.CHAMPION}
    assert not any(v.pruned for v in b.store.versions.list())
    assert b.registry.serving() is None  # not here: nothing serves on host b
    # Host a still serves its intact champion, and judges it again once it leads.
    b.leadership.release()
    assert a.leadership.tick()
    a.cycles.resume(a)
    assert a.registry.serving() is not None and a.registry.serving().version_id == "v2"


def test_a_bad_local_copy_of_another_hosts_version_is_set_aside_not_rejected(
    two_hosts: tuple[Runtime, Runtime], tmp_path: Path
) -> None:
    a, b = two_hosts
    assert a.leadership.tick()
    _publish_and_promote(a, tmp_path, "v1")
    copy = b.registry.layout.version_dir("v1")
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.mkdir()
    (copy / "adapter.safetensors").write_bytes(b"not the published bytes")
    a.leadership.release()
    assert b.leadership.tick()
    b.cycles.resume(b)
    assert b.store.versions.get("v1").status is VersionStatus.CHAMPION
    assert not copy.exists() and any(b.registry.layout.quarantine.iterdir())


def test_the_host_whose_store_holds_a_missing_champion_still_judges_it(
    two_hosts: tuple[Runtime, Runtime], tmp_path: Path
) -> None:
    a, _b = two_hosts
    assert a.leadership.tick()
    _publish_and_promote(a, tmp_path, "v1")
    _publish_and_promote(a, tmp_path, "v2")
    shutil.rmtree(a.registry.layout.version_dir("v2"))
    a.cycles.resume(a)
    assert a.store.champion.get().version_id == "v1"


# -- fencing: a leader whose lease was taken over cannot write what matters ---------------------------------------


def _hosts_with_clocks(
    tmp_path: Path, url: str, *, skew_s: float
) -> tuple[Runtime, FakeClock, Runtime, FakeClock]:
    """Host a's clock runs ``skew_s`` behind host b's: a still believes it leads when b may take over (a process
    paused past its lease, as far as the others can tell)."""
    made = []
    for host, offset in (("a", 0.0), ("b", skew_s)):
        clock = FakeClock()
        clock.advance(offset)
        config = fast_config(tmp_path / f"host-{host}", database={"url": url}, daemon={"replica_id": host})
        made += [
            build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()), clock=clock),
            clock,
        ]
    return made[0], made[1], made[2], made[3]


@pytest.fixture
def skewed(tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "QTHA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    a, a_clock, b, b_clock = _hosts_with_clocks(tmp_path, postgres.fresh_url(), skew_s=10.0)  # ttl 3 s
    try:
        yield a, a_clock, b, b_clock
    finally:
        a.store.close()
        b.store.close()


def _source(tmp_path: Path, version: str) -> Path:
    src = tmp_path / f"src-{version}"
    src.mkdir()
    (src / "adapter.safetensors").write_bytes(version.encode() * 64)
    return src


def test_a_leader_whose_lease_was_taken_over_cannot_promote_roll_back_or_reject(
    skewed: tuple, tmp_path: Path
) -> None:
    a, _a_clock, b, _b_clock = skewed
    assert a.leadership.tick()
    for version in ("v1", "v2", "v3"):
        a.registry.publish_candidate(
            version, _source(tmp_path, version), base_fingerprint="b", adapter_kind="qtha"
        )
    a.registry.promote("v1", expected_epoch=0, actor="a", reason="setup")
    a.registry.promote("v2", expected_epoch=1, actor="a", reason="setup")
    assert b.leadership.tick()  # b's clock is past a's expiry: it takes over (epoch 2)
    assert a.leadership.is_leader()  # a, paused, still believes it leads
    before = a.store.champion.get()
    with pytest.raises(StaleEpochError, match="no longer current"):
        a.registry.promote("v3", expected_epoch=before.epoch, actor="a", reason="late")
    with pytest.raises(StaleEpochError):
        a.registry.rollback(actor="a", reason="late")
    with pytest.raises(StaleEpochError):
        a.store.versions.reject("v3", reason="late")
    with pytest.raises(StaleEpochError):
        a.store.champion.set_pinned(True, actor="a", reason="late")
    assert a.store.champion.get() == before
    assert a.store.versions.get("v3").status is VersionStatus.CANDIDATE
    # The new leader's writes go through.
    state = b.store.champion.get()
    b.store.champion.promote("v3", expected_epoch=state.epoch, actor="b", reason="leader")
    assert b.store.champion.get().version_id == "v3"
    # Every champion move in the audit log came from a current term: none from a after the takeover.
    assert sorted(e.actor for e in b.store.audit.entries(kind=AuditKind.SERVE)) == ["a", "a", "b"]


def test_a_stale_leaders_cycle_stops_at_its_next_transition_and_the_new_leader_finishes_it(
    skewed: tuple, tmp_path: Path
) -> None:
    a, _a_clock, b, _b_clock = skewed
    assert a.leadership.tick()

    class TakenOverWhileTraining(StandinTrainer):
        def train(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            assert b.leadership.tick()  # the takeover happens while a trains
            return super().train(*args, **kwargs)

    runner_a = CycleRunner(
        a.registry, TakenOverWhileTraining(), mean_gain_gate(), owner="a#1", workdirs=tmp_path / "a-cycles"
    )
    cycle = runner_a.run(trigger_reasons=["test"], recipe=standin_recipe(steps=4))
    assert cycle.state is CycleState.TRAIN  # TRAIN → VALIDATE was refused; nothing after it happened
    assert a.store.champion.get().version_id is None
    runner_b = CycleRunner(
        b.registry, StandinTrainer(), mean_gain_gate(), owner="b#2", workdirs=tmp_path / "b-cycles"
    )
    adopted = runner_b.start()
    assert adopted is not None and adopted.id == cycle.id
    done = runner_b.resume(adopted)
    # Host b cannot see a's candidate (separate state directories): the cycle fails, the candidate is not judged.
    assert done.state is CycleState.FAILED and "not on this host" in (done.error or "")
    assert b.store.versions.get(done.candidate_id).status is VersionStatus.CANDIDATE
    assert b.store.champion.get().version_id is None
