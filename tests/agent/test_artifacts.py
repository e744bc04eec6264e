"""Artifacts on disk and the registry that moves them together with the champion row."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import ArtifactCorruptError, ArtifactMissingError, Layout
from agent.artifacts.registry import Registry
from agent.store import (
    AuditKind,
    ChampionPinnedError,
    ChampionState,
    Store,
    VersionStateError,
    VersionStatus,
)


def _source(root: Path, name: str, payload: bytes) -> Path:
    src = root / f"src-{name}"
    (src / "sub").mkdir(parents=True)
    (src / "adapter.safetensors").write_bytes(payload)
    (src / "sub" / "manifest.json").write_text(json.dumps({"name": name}))
    return src


def _flip_byte(path: Path, offset: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def layout(state_dir: Path) -> Layout:
    return Layout(state_dir)


@pytest.fixture
def registry(store: Store, layout: Layout) -> Registry:
    return Registry(store, layout)


def _candidate(registry: Registry, tmp_path: Path, version_id: str, payload: bytes | None = None) -> None:
    registry.publish_candidate(
        version_id,
        _source(tmp_path, version_id, payload or version_id.encode() * 16),
        base_fingerprint="base",
        adapter_kind="qtha",
    )


# -- files ---------------------------------------------------------------------------------------------------


def test_publish_writes_a_verified_version_and_leaves_no_temporaries(layout: Layout, tmp_path: Path) -> None:
    art = artifacts.publish(layout, "v1", _source(tmp_path, "v1", b"weights"), metadata={"k": 1})
    assert art.path == layout.versions / "v1" and set(art.files) == {
        "adapter.safetensors",
        "sub/manifest.json",
    }
    manifest = json.loads((art.path / artifacts.MANIFEST_NAME).read_text())
    assert manifest["sha256"] == art.sha256 == artifacts.digest_of(manifest["files"])
    assert manifest["files"]["adapter.safetensors"] == hashlib.sha256(b"weights").hexdigest()
    assert artifacts.verify(layout, "v1").sha256 == art.sha256 and artifacts.verify(
        layout, "v1"
    ).metadata == {"k": 1}
    assert [p.name for p in layout.versions.iterdir()] == ["v1"]
    again = artifacts.publish(layout, "v1", _source(tmp_path, "other", b"different"))
    assert again.sha256 == art.sha256  # idempotent: an intact published version is never overwritten


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _flip_byte(p / "adapter.safetensors"), r"adapter.safetensors has sha256 .* manifest says"),
        (lambda p: (p / "extra.bin").write_bytes(b"x"), r"do not match the manifest"),
        (lambda p: (p / "sub" / "manifest.json").unlink(), r"do not match the manifest"),
        (lambda p: (p / artifacts.MANIFEST_NAME).write_text("{not json"), r"unreadable artifact.json"),
    ],
)
def test_verify_detects_damage(layout: Layout, tmp_path: Path, damage: object, message: str) -> None:
    artifacts.publish(layout, "v1", _source(tmp_path, "v1", b"weights" * 10))
    damage(layout.versions / "v1")  # type: ignore[operator]
    with pytest.raises(ArtifactCorruptError, match=message):
        artifacts.verify(layout, "v1")


def test_missing_version_and_bad_ids_are_refused(layout: Layout) -> None:
    with pytest.raises(ArtifactMissingError, match="'v9' is missing"):
        artifacts.verify(layout, "v9")
    for bad in ("../etc", ".tmp-x", "a/b", ""):
        with pytest.raises(ValueError, match="invalid version id"):
            layout.version_dir(bad)


def test_current_pointer_is_a_relative_symlink_replaced_atomically(layout: Layout, tmp_path: Path) -> None:
    assert artifacts.read_current(layout) is None
    for v in ("v1", "v2"):
        artifacts.publish(layout, v, _source(tmp_path, v, v.encode()))
    artifacts.point_current(layout, "v1")
    artifacts.point_current(layout, "v2")
    assert os.readlink(layout.current) == "versions/v2" and artifacts.read_current(layout) == "v2"
    assert (layout.current / "adapter.safetensors").read_bytes() == b"v2"
    assert sorted(p.name for p in layout.state_dir.iterdir()) == ["current", "quarantine", "versions"]


def test_clean_temporaries_removes_interrupted_writes(layout: Layout, tmp_path: Path) -> None:
    artifacts.publish(layout, "v1", _source(tmp_path, "v1", b"a"))
    for name in (".tmp-v2-abcd", ".tmp-v3-0123", ".tmp-delete-v3-4567"):
        (layout.versions / name).mkdir()
        (layout.versions / name / "half").write_bytes(b"x")
    os.symlink("versions/v1", layout.state_dir / ".current.tmp-1234")
    removed = sorted(p.name for p in artifacts.clean_temporaries(layout, in_use=lambda v: v == "v3"))
    assert removed == [".tmp-delete-v3-4567", ".tmp-v2-abcd"]  # v3 may still be being published
    assert [p.name for p in artifacts.clean_pointer_temporaries(layout)] == [".current.tmp-1234"]
    assert sorted(p.name for p in layout.versions.iterdir()) == [".tmp-v3-0123", "v1"]
    assert artifacts.version_ids_on_disk(layout) == ["v1"]


# -- registry: moves of pointer and row together --------------------------------------------------------------


def test_promote_moves_row_and_pointer_together(registry: Registry, store: Store, tmp_path: Path) -> None:
    _candidate(registry, tmp_path, "v1")
    _candidate(registry, tmp_path, "v2")
    registry.promote("v1", expected_epoch=0, actor="bootstrap", reason="first")
    state = registry.promote("v2", expected_epoch=1, actor="cycle 1", reason="better", automatic=True)
    assert state.version_id == artifacts.read_current(registry.layout) == "v2"
    serving = registry.serving()
    assert serving is not None and serving.sha256 == store.versions.get("v2").sha256


def test_flipped_byte_candidate_is_refused_and_champion_keeps_serving(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    _candidate(registry, tmp_path, "v1")
    registry.promote("v1", expected_epoch=0, actor="bootstrap", reason="first")
    _candidate(registry, tmp_path, "v2")
    _flip_byte(registry.layout.versions / "v2" / "adapter.safetensors")
    with pytest.raises(ArtifactCorruptError, match="'v2': adapter.safetensors has sha256"):
        registry.promote("v2", expected_epoch=1, actor="cycle 1", reason="better", automatic=True)
    assert store.champion.get().version_id == "v1" and store.champion.get().epoch == 1
    assert artifacts.read_current(registry.layout) == "v1"
    assert registry.serving().version_id == "v1"  # type: ignore[union-attr]
    assert store.versions.get("v2").status is VersionStatus.REJECTED
    assert not (registry.layout.versions / "v2").exists()
    [quarantined] = list(registry.layout.quarantine.iterdir())
    assert quarantined.name.startswith("v2-") and "sha256" in (quarantined / "REASON.txt").read_text()
    assert [e.kind for e in store.audit.entries()] == [AuditKind.SERVE, AuditKind.QUARANTINE]
    with pytest.raises(VersionStateError, match="'v2' is rejected"):
        store.champion.promote("v2", expected_epoch=1, actor="x", reason="y")


def test_rollback_moves_both_back_and_pin_blocks_automatic_moves(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    for i, v in enumerate(("v1", "v2")):
        _candidate(registry, tmp_path, v)
        registry.promote(v, expected_epoch=i, actor="cycle", reason="r")
    state = registry.rollback(actor="operator", reason="v2 regressed")
    assert state.version_id == artifacts.read_current(registry.layout) == "v1"
    _candidate(registry, tmp_path, "v3")
    registry.pin(actor="operator", reason="freeze")
    with pytest.raises(ChampionPinnedError):
        registry.promote("v3", expected_epoch=state.epoch, actor="cycle", reason="r", automatic=True)
    assert artifacts.read_current(registry.layout) == "v1"
    pinned = registry.pin("v3", actor="operator", reason="serve v3 and hold it")
    assert pinned.version_id == artifacts.read_current(registry.layout) == "v3" and pinned.pinned


def test_a_move_that_fails_after_the_swap_puts_current_back(
    registry: Registry, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _candidate(registry, tmp_path, "v1")
    _candidate(registry, tmp_path, "v2")
    registry.promote("v1", expected_epoch=0, actor="bootstrap", reason="first")

    def commit_fails(version_id: str, *, within: Any, **_kw: Any) -> ChampionState:
        within(ChampionState(version_id, 2, False, None))  # the swap happened...
        raise OSError("connection lost during COMMIT")  # ...but the row never moved

    monkeypatch.setattr(store.champion, "promote", commit_fails)
    with pytest.raises(OSError, match="connection lost"):
        registry.promote("v2", expected_epoch=1, actor="cycle", reason="r")
    assert artifacts.read_current(registry.layout) == "v1" == store.champion.get().version_id


def test_reconcile_repairs_a_pointer_left_behind_by_a_crash(registry: Registry, tmp_path: Path) -> None:
    for i, v in enumerate(("v1", "v2")):
        _candidate(registry, tmp_path, v)
        registry.promote(v, expected_epoch=i, actor="cycle", reason="r")
    artifacts.point_current(registry.layout, "v1")  # as if killed between swap and commit
    assert registry.reconcile().version_id == artifacts.read_current(registry.layout) == "v2"


def test_reconcile_falls_back_when_the_champion_artifact_is_corrupt(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    for i, v in enumerate(("v1", "v2")):
        _candidate(registry, tmp_path, v)
        registry.promote(v, expected_epoch=i, actor="cycle", reason="r")
    _flip_byte(registry.layout.versions / "v2" / "adapter.safetensors")
    serving = registry.serving()
    assert serving is not None and serving.version_id == "v1"
    assert store.champion.get().version_id == artifacts.read_current(registry.layout) == "v1"
    assert store.versions.get("v2").status is VersionStatus.REJECTED
    assert store.audit.entries()[-1].reason.startswith("champion artifact unusable")


def test_a_tampered_champion_is_rolled_back_with_a_warning(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i, v in enumerate(("v1", "v2")):
        _candidate(registry, tmp_path, v)
        registry.promote(v, expected_epoch=i, actor="cycle", reason="r")
    _flip_byte(registry.layout.versions / "v2" / "adapter.safetensors")
    assert registry.reconcile().version_id == "v1"
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "champion v2 rolled back to v1" in warning.getMessage()


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_corrupt_champion_that_is_the_only_version_leaves_the_base_model_serving(
    registry: Registry, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    _candidate(registry, tmp_path, "v1")
    registry.promote("v1", expected_epoch=0, actor="cycle", reason="r")
    if damage == "flip":
        _flip_byte(registry.layout.versions / "v1" / "adapter.safetensors")
    else:
        (registry.layout.versions / "v1" / "adapter.safetensors").unlink()
    state = registry.reconcile()
    assert state.version_id is None and state.epoch == 2
    assert registry.serving() is None  # the base model serves
    assert not os.path.lexists(registry.layout.current)  # no dangling pointer
    assert store.versions.get("v1").status is VersionStatus.REJECTED
    assert [p.name.split("-")[0] for p in registry.layout.quarantine.iterdir()] == ["v1"]
    last = store.audit.serving_history()[-1]
    assert last.version_id is None and "serving the base model" in last.reason
    assert any("serving the base model" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    registry.reconcile()  # a second start is quiet and does not move anything
    assert store.champion.get().epoch == 2
    # The next cycle's candidate can be promoted from the base (epoch 2) and rollback never returns to v1.
    _candidate(registry, tmp_path, "v2")
    assert registry.promote("v2", expected_epoch=2, actor="cycle", reason="r").version_id == "v2"
    with pytest.raises(VersionStateError):
        registry.rollback(actor="op", reason="r")


def test_a_current_that_is_a_directory_is_moved_aside_and_re_pointed(registry: Registry, tmp_path: Path) -> None:
    _candidate(registry, tmp_path, "v1")
    registry.promote("v1", expected_epoch=0, actor="cycle", reason="r")
    os.unlink(registry.layout.current)
    registry.layout.current.mkdir()
    (registry.layout.current / "junk").write_text("x")
    assert registry.reconcile().version_id == "v1"
    assert artifacts.read_current(registry.layout) == "v1"
    moved = [p for p in registry.layout.quarantine.iterdir() if p.name.startswith("current-")]
    assert len(moved) == 1 and (moved[0] / "junk").read_text() == "x" and (moved[0] / "REASON.txt").exists()


def test_housekeeping_keeps_last_k_and_every_champion(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    for v in ("v1", "v2", "v3", "v4", "v5", "v6"):
        _candidate(registry, tmp_path, v)
        store.clock.advance(1)  # type: ignore[attr-defined]
    registry.promote("v1", expected_epoch=0, actor="c", reason="r")
    registry.promote("v3", expected_epoch=1, actor="c", reason="r")
    artifacts.publish(registry.layout, "orphan", _source(tmp_path, "orphan", b"o"))
    (registry.layout.versions / ".tmp-v7-0000").mkdir()
    report = registry.housekeeping(keep_last=2, protect=["v2"])
    assert (
        report.pruned == ("v4",) and report.orphans == ("orphan",) and report.temporaries == (".tmp-v7-0000",)
    )
    assert artifacts.version_ids_on_disk(registry.layout) == ["v1", "v2", "v3", "v5", "v6"]
    assert store.versions.get("v4").pruned and not store.versions.get("v1").pruned
    with pytest.raises(VersionStateError, match="pruned"):
        store.champion.promote("v4", expected_epoch=2, actor="c", reason="r")
    assert registry.housekeeping(keep_last=2).pruned == ("v2",)
