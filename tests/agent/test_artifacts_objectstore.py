"""A shared artifact store at an fsspec URL: published once, verified on every node, cached locally.

Two registries with separate state directories on one database stand for two hosts; the "remote" is a real fsspec
filesystem: a ``file://`` URL to a temporary directory and fsspec's in-process memory filesystem.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import ArtifactCorruptError, ArtifactMissingError, Layout
from agent.artifacts.objectstore import ObjectStore
from agent.artifacts.registry import Registry
from agent.artifacts.shared import DirectoryStore, local_copy, open_shared
from agent.config import load_config
from agent.store import AuditKind, Store, VersionStatus

fsspec = pytest.importorskip("fsspec")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["file", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The remote store's URL: ``file:///…/remote`` or ``memory://qtha-<hex>`` (removed afterwards)."""
    if request.param == "file":
        yield (tmp_path / "remote").as_uri()
        return
    root = f"memory://qtha-{secrets.token_hex(4)}"
    yield root
    fs, path = fsspec.core.url_to_fs(root)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _host(store: Store, tmp_path: Path, name: str, url: str) -> Registry:
    return Registry(store, Layout(tmp_path / f"host-{name}"), shared=ObjectStore(url))


@pytest.fixture
def hosts(sqlite_store: Store, tmp_path: Path, url: str) -> tuple[Registry, Registry]:
    """Hosts a and b: their own state directories, one database, one store at ``url``."""
    return _host(sqlite_store, tmp_path, "a", url), _host(sqlite_store, tmp_path, "b", url)


def _source(tmp_path: Path, version: str, payload: bytes | None = None) -> Path:
    src = tmp_path / f"src-{version}"
    (src / "sub").mkdir(parents=True, exist_ok=True)
    (src / "adapter.safetensors").write_bytes(payload or version.encode() * 64)
    (src / "sub" / "adapter.json").write_text(json.dumps({"version": version}))
    return src


def _publish(registry: Registry, tmp_path: Path, version: str) -> None:
    registry.publish_candidate(version, _source(tmp_path, version), base_fingerprint="base", adapter_kind="qtha")


def _remote(url: str, *parts: str) -> tuple[object, str]:
    fs, root = fsspec.core.url_to_fs(url)
    return fs, "/".join((str(root).rstrip("/"), *parts))


def _tamper(url: str, version: str, name: str = "adapter.safetensors") -> None:
    fs, path = _remote(url, "versions", version, name)
    data = bytearray(fs.cat_file(path))  # type: ignore[attr-defined]
    data[3] ^= 0x01
    fs.pipe_file(path, bytes(data))  # type: ignore[attr-defined]


def test_published_on_one_host_fetched_and_verified_on_another(
    sqlite_store: Store, tmp_path: Path, url: str, hosts: tuple[Registry, Registry]
) -> None:
    a, b = hosts
    _publish(a, tmp_path, "v1")
    row = sqlite_store.versions.get("v1")
    assert row.artifact_path == f"{a.shared_id}:versions/v1" and b.shared_id == a.shared_id
    fs, vdir = _remote(url, "versions", "v1")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(vdir)) == [  # type: ignore[attr-defined]
        "adapter.json",
        "adapter.safetensors",
        artifacts.MANIFEST_NAME,
    ]
    assert not (a.layout.versions / "v1").exists()  # published to the store only
    art = b.load("v1")
    assert art.path == b.layout.versions / "v1" and art.sha256 == row.sha256
    assert (art.path / "sub" / "adapter.json").read_text() == json.dumps({"version": "v1"})
    assert artifacts.verify(b.layout, "v1").sha256 == row.sha256  # a sealed version, manifest and all
    assert [p.name for p in b.layout.versions.iterdir()] == ["v1"]  # no temporaries left behind
    b.promote("v1", expected_epoch=0, actor="b", reason="first")
    served = b.serving()
    assert served is not None and served.version_id == "v1" and artifacts.read_current(b.layout) == "v1"
    assert a.reconcile().version_id == "v1" and a.serving() is not None  # a fetches its own copy the same way


def test_files_are_uploaded_before_the_manifest(
    sqlite_store: Store, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _host(sqlite_store, tmp_path, "a", url)
    written: list[str] = []
    fs = a.shared.fs  # type: ignore[union-attr]
    real_open = fs.open

    def recording_open(path: str, mode: str = "rb", **kw: object) -> object:
        if "w" in mode:
            written.append(path)
        return real_open(path, mode, **kw)

    monkeypatch.setattr(fs, "open", recording_open)  # pipe_file writes through open too
    _publish(a, tmp_path, "v1")
    names = [p.rsplit("/", 1)[-1] for p in written if "/versions/" in p]
    assert names[-1] == artifacts.MANIFEST_NAME and sorted(names[:-1]) == ["adapter.json", "adapter.safetensors"]


def test_an_interrupted_upload_is_not_a_version_and_is_cleaned_up(
    sqlite_store: Store, tmp_path: Path, url: str, hosts: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = hosts
    shared = a.shared
    assert isinstance(shared, ObjectStore)

    def crash(*_args: object, **_kw: object) -> None:
        raise OSError("connection reset during the upload")

    monkeypatch.setattr(shared.fs, "pipe_file", crash)  # the manifest never arrives
    with pytest.raises(OSError, match="connection reset"):
        _publish(a, tmp_path, "v1")
    monkeypatch.undo()
    assert shared.version_ids() == []
    with pytest.raises(ArtifactMissingError, match="no artifact.json"):
        shared.fetch("v1", b.layout, expected_sha256="0" * 64)
    assert shared.clean_temporaries(in_use=lambda v: v == "v1") == []  # its writer may still be uploading
    assert shared.clean_temporaries() == ["v1"]
    _publish(a, tmp_path, "v1")  # publishing again starts clean and completes
    assert shared.version_ids() == ["v1"] and b.load("v1").sha256 == sqlite_store.versions.get("v1").sha256


def test_a_tampered_remote_file_is_refused_and_the_champion_keeps_serving(
    sqlite_store: Store, tmp_path: Path, url: str, hosts: tuple[Registry, Registry]
) -> None:
    a, b = hosts
    _publish(a, tmp_path, "v1")
    a.promote("v1", expected_epoch=0, actor="a", reason="first")
    _publish(a, tmp_path, "v2")
    _tamper(url, "v2")
    with pytest.raises(ArtifactCorruptError) as refused:
        b.promote("v2", expected_epoch=1, actor="b", reason="better", automatic=True)
    message = str(refused.value)
    assert "\n" not in message and "adapter.safetensors" in message and "/versions/v2" in message
    assert "altered after publication" in message and "check what writes to [artifacts] root" in message
    assert sqlite_store.champion.get().version_id == "v1"
    assert sqlite_store.versions.get("v2").status is VersionStatus.REJECTED
    assert sqlite_store.audit.entries()[-1].kind is AuditKind.QUARANTINE
    assert b.reconcile().version_id == "v1"  # b's start-up: its `current` follows the champion
    served = b.serving()
    assert served is not None and served.version_id == "v1"  # fetched and verified on b
    assert sorted(p.name for p in b.layout.versions.iterdir()) == ["v1"]  # nothing of v2, no temporaries
    shared = b.shared
    assert isinstance(shared, ObjectStore) and shared.version_ids() == ["v1"]
    fs, quarantine = _remote(url, "quarantine")
    [reason] = [p for p in fs.find(quarantine) if p.endswith("REASON.txt")]  # type: ignore[attr-defined]
    assert "/quarantine/v2-" in reason and "adapter.safetensors" in fs.cat_file(reason).decode()  # type: ignore[attr-defined]


def test_a_tampered_remote_champion_keeps_serving_from_the_verified_cache(
    sqlite_store: Store, tmp_path: Path, url: str
) -> None:
    a = _host(sqlite_store, tmp_path, "a", url)
    _publish(a, tmp_path, "v1")
    a.promote("v1", expected_epoch=0, actor="a", reason="first")  # a's cache now holds a verified copy
    _tamper(url, "v1")
    served = a.serving()
    assert served is not None and served.version_id == "v1"
    assert sqlite_store.versions.get("v1").status is VersionStatus.CHAMPION
    # A host without a cache copy cannot fetch it: the leader judges the store's copy, and nothing intact is left.
    b = _host(sqlite_store, tmp_path, "b", url)
    state = b.reconcile()
    assert state.version_id is None and sqlite_store.versions.get("v1").status is VersionStatus.REJECTED


def test_a_deleted_local_cache_is_fetched_again(sqlite_store: Store, tmp_path: Path, url: str, hosts: tuple[Registry, Registry]
) -> None:
    a, b = hosts
    _publish(a, tmp_path, "v1")
    b.promote("v1", expected_epoch=0, actor="b", reason="first")
    shutil.rmtree(b.layout.versions)  # the whole cache is gone; `current` dangles
    served = b.serving()
    assert served is not None and served.version_id == "v1"
    assert (b.layout.current / "adapter.safetensors").read_bytes() == b"v1" * 64
    assert sqlite_store.versions.get("v1").status is VersionStatus.CHAMPION
    assert not any(b.layout.quarantine.iterdir())  # a missing copy is simply fetched, nothing set aside
    (b.layout.versions / "v1" / "adapter.safetensors").write_bytes(b"bit rot")  # a bad cache copy
    again = b.load("v1")
    assert (again.path / "adapter.safetensors").read_bytes() == b"v1" * 64
    assert len(list(b.layout.quarantine.iterdir())) == 1  # the bad copy, kept for a post-mortem
    assert sqlite_store.versions.get("v1").status is VersionStatus.CHAMPION


def test_a_manifest_that_differs_from_the_registered_digest_is_refused_before_any_download(
    sqlite_store: Store, tmp_path: Path, url: str, hosts: tuple[Registry, Registry]
) -> None:
    a, b = hosts
    _publish(a, tmp_path, "v1")
    fs, vdir = _remote(url, "versions", "v1")
    other = {"adapter.safetensors": "0" * 64}
    fs.pipe_file(f"{vdir}/{artifacts.MANIFEST_NAME}", artifacts.manifest_bytes("v1", other, {}))  # type: ignore[attr-defined]
    with pytest.raises(ArtifactCorruptError, match="differs from the registered"):
        b.load("v1")
    assert sqlite_store.versions.get("v1").status is VersionStatus.REJECTED
    assert not (b.layout.versions / "v1").exists()


@pytest.mark.parametrize("name", ["../escape.safetensors", "/abs.safetensors", "sub/../../x", "artifact.json"])
def test_a_manifest_naming_a_path_outside_the_version_is_refused(tmp_path: Path, url: str, name: str) -> None:
    store = ObjectStore(url)
    fs, vdir = _remote(url, "versions", "v1")
    fs.makedirs(vdir, exist_ok=True)  # type: ignore[attr-defined]
    fs.pipe_file(f"{vdir}/{artifacts.MANIFEST_NAME}", artifacts.manifest_bytes("v1", {name: "0" * 64}, {}))  # type: ignore[attr-defined]
    cache = Layout(tmp_path / "cache")
    with pytest.raises(ArtifactCorruptError, match="not a plain relative path"):
        store.fetch("v1", cache, expected_sha256=artifacts.digest_of({name: "0" * 64}))
    assert not (tmp_path / "escape.safetensors").exists() and not (cache.versions / "v1").exists()


def test_housekeeping_prunes_in_the_store_and_in_the_cache(sqlite_store: Store, tmp_path: Path, url: str) -> None:
    a = _host(sqlite_store, tmp_path, "a", url)
    for version in ("v1", "v2", "v3", "v4"):
        _publish(a, tmp_path, version)
        a.load(version)  # cached here
        sqlite_store.clock.advance(1)  # type: ignore[attr-defined]
    a.promote("v1", expected_epoch=0, actor="a", reason="first")
    a.shared.publish("orphan", _source(tmp_path, "orphan"), metadata={})  # type: ignore[union-attr]
    report = a.housekeeping(keep_last=2)
    assert report.pruned == ("v2",) and report.orphans == ("orphan",)
    assert a.shared.version_ids() == ["v1", "v3", "v4"]  # type: ignore[union-attr]
    assert artifacts.version_ids_on_disk(a.layout) == ["v1", "v3", "v4"]


def test_the_store_identity_is_written_once(url: str) -> None:
    first, second = ObjectStore(url), ObjectStore(url)
    assert first.identity() == second.identity() == ObjectStore(url).identity()
    assert len(first.identity()) == 16


def test_config_accepts_a_url_and_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QTHA_CONFIG", "QTHA_ARTIFACTS__ROOT"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(None, state_dir=str(tmp_path), artifacts={"root": "memory://qtha-config"})
    assert config.artifacts.root == "memory://qtha-config"
    assert isinstance(open_shared(config.artifacts.root), ObjectStore)
    config = load_config(None, state_dir=str(tmp_path), artifacts={"root": tmp_path / "shared"})
    opened = open_shared(config.artifacts.root)  # type: ignore[arg-type]
    assert isinstance(opened, DirectoryStore) and opened.location == str(tmp_path / "shared")
    assert load_config(None, artifacts={"root": ""}).artifacts.root is None


def test_a_url_with_an_unknown_protocol_or_a_missing_package_says_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"'nosuchfs://bucket/x'.*nosuchfs"):
        open_shared("nosuchfs://bucket/x")
    if not _installed("s3fs"):
        with pytest.raises(ValueError, match="s3fs"):
            open_shared("s3://bucket/qtha")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_plain_directory_root_does_not_import_fsspec(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from agent.artifacts import Layout, Registry, open_shared; "
        "from agent.store import open_store; "
        f"root = Path({str(tmp_path)!r}); "
        "s = open_store(f'sqlite:///{root}/db.sqlite'); "
        "r = Registry(s, Layout(root / 'state'), shared=open_shared(str(root / 'shared'))); "
        "src = root / 'src'; src.mkdir(); (src / 'a.safetensors').write_bytes(b'x'); "
        "r.publish_candidate('v1', src, base_fingerprint='b', adapter_kind='qtha'); r.load('v1'); "
        "assert 'fsspec' not in sys.modules, 'fsspec imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_serving_node_gets_a_verified_local_copy_and_judges_nothing(
    sqlite_store: Store, tmp_path: Path, url: str
) -> None:
    a = _host(sqlite_store, tmp_path, "a", url)
    _publish(a, tmp_path, "v1")
    _publish(a, tmp_path, "v2")
    cache, shared = Layout(tmp_path / "serve-host"), ObjectStore(url)
    rows = {v: sqlite_store.versions.get(v) for v in ("v1", "v2")}
    art = local_copy(cache, shared, "v1", expected_sha256=rows["v1"].sha256)
    assert art.path == cache.versions / "v1" and local_copy(cache, shared, "v1", expected_sha256=art.sha256) == art
    _tamper(url, "v2")
    with pytest.raises(ArtifactCorruptError, match="adapter.safetensors"):
        local_copy(cache, shared, "v2", expected_sha256=rows["v2"].sha256)
    assert shared.version_ids() == ["v1", "v2"]  # left where it is: the leader judges it
    assert sqlite_store.versions.get("v2").status is VersionStatus.CANDIDATE
    assert artifacts.version_ids_on_disk(cache) == ["v1"]
