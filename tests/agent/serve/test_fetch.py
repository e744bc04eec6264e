"""A serving replica on a host of its own fetches a version it lacks from the shared artifact store, verified, and
never judges the shared copy (no model is loaded here: :func:`agent.serve.loader.fetch_from` alone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.artifacts import ArtifactCorruptError, ArtifactMissingError, Layout
from agent.artifacts.layout import publish, verify
from agent.serve.loader import fetch_from


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Layout, Layout, str]:
    """The shared store holding v1, an empty cache of this host, and v1's digest."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "adapter.safetensors").write_bytes(b"weights" * 32)
    shared, cache = Layout(tmp_path / "shared"), Layout(tmp_path / "host")
    return shared, cache, publish(shared, "v1", source).sha256


def test_a_missing_version_is_copied_into_the_cache_verified(stores: tuple[Layout, Layout, str]) -> None:
    shared, cache, sha = stores
    fetched = fetch_from(shared, cache)("v1", sha)
    assert fetched.path == cache.version_dir("v1") and fetched.sha256 == sha == verify(cache, "v1").sha256


def test_a_shared_copy_that_differs_from_the_row_is_refused_and_left_alone(
    stores: tuple[Layout, Layout, str],
) -> None:
    shared, cache, sha = stores
    with pytest.raises(ArtifactCorruptError, match="differs from the registered"):
        fetch_from(shared, cache)("v1", "0" * 64)
    (shared.version_dir("v1") / "adapter.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactCorruptError):
        fetch_from(shared, cache)("v1", sha)
    assert shared.version_dir("v1").exists()  # judging it is the leader's job, not a replica's
    assert not cache.version_dir("v1").exists()
    with pytest.raises(ArtifactMissingError):
        fetch_from(shared, cache)("v2", sha)


def test_another_process_installing_it_first_is_fine(
    stores: tuple[Layout, Layout, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, cache, sha = stores
    fetch = fetch_from(shared, cache)
    import agent.artifacts.layout as layout

    real_seal = layout._seal

    def racing_seal(into: Layout, tmp: Path, target: Path, manifest: bytes) -> None:
        monkeypatch.setattr(layout, "_seal", real_seal)  # the other process seals as usual...
        publish(into, "v1", shared.version_dir("v1"))  # ...and wins the rename
        real_seal(into, tmp, target, manifest)

    monkeypatch.setattr(layout, "_seal", racing_seal)
    assert fetch("v1", sha).sha256 == sha
    assert [p.name for p in cache.versions.iterdir()] == ["v1"]  # our temporary copy is gone
