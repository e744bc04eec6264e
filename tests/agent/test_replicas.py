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

from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime
from agent.daemon.runtime import Runtime
from agent.store import VersionStatus
from tests.agent.conftest import PostgresServer
from tests.agent.test_daemon import fast_config
from tests.support.standin_trainer import StandinTrainer

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
    rt.registry.promote(
        version, expected_epoch=rt.store.champion.get().epoch, actor="test", reason="setup"
    )


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
