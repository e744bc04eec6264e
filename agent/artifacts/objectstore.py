"""Versions in an object store, through fsspec: ``[artifacts] root = "s3://bucket/qtha"`` (or ``gs://``, ``az://``,
``file:///…``, ``memory://…``: any protocol fsspec knows, with its package installed, e.g. s3fs).

The store holds the same layout as a shared directory::

    store-id                   the store's identity (written once)
    versions/<id>/…            a version's files, then versions/<id>/artifact.json (the same digest manifest)
    quarantine/<id>-<hex>/…    a version that failed verification, with REASON.txt

An object store has no atomic rename of a directory, so the manifest is the commit point: files are uploaded first
and the manifest last, and a version without a manifest does not exist for readers (housekeeping removes it when
no live writer owns it). A reader copies a version into its local cache through
:func:`agent.artifacts.layout.install`, which checks every file against the manifest before the copy is renamed
into place. Credentials come from the protocol's usual sources (for S3: ``AWS_*`` variables, a profile, an instance
role), never from qtha's configuration. Only safetensors and JSON travel; nothing is unpickled.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import (
    _VERSION_ID,
    MANIFEST_NAME,
    STORE_ID_NAME,
    Artifact,
    ArtifactCorruptError,
    ArtifactMissingError,
    Layout,
    _check_id,
    _files_under,
)

__all__ = ["ObjectStore"]


class _Discard:
    """A write-only sink: hashing a stored file without keeping it."""

    def write(self, data: bytes) -> int:
        return len(data)


class ObjectStore:
    """A shared artifact store at an fsspec URL (see the module docstring).

    Args:
        url: ``protocol://…``; ``storage_options`` go to the protocol's filesystem (tests, not configuration).

    Raises:
        ValueError: fsspec is not installed, the protocol is unknown or its package is missing (names the fix).
    """

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError:
            raise ValueError(
                f"[artifacts] root = {url!r} is a URL, which needs fsspec: pip install 'qtha[objectstore]'"
            ) from None
        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except (ImportError, ValueError) as exc:  # "Protocol not known", "Install s3fs to access S3"
            raise ValueError(f"[artifacts] root = {url!r}: {exc}") from None
        self.fs = fs
        self.root = str(root).rstrip("/")
        self._url = url

    @property
    def location(self) -> str:
        return self._url

    # -- paths -------------------------------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _version(self, version_id: str) -> str:
        _check_id(version_id)
        return self._join("versions", version_id)

    def _where(self, path: str) -> str:
        return str(self.fs.unstrip_protocol(path))

    def _makedirs_for(self, path: str) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a local filesystem needs the parents

    def _rm_tree(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass  # an object store has no empty "directories" left to remove
        self.fs.invalidate_cache(path)

    # -- the store ---------------------------------------------------------------------------------------------------

    def identity(self) -> str:
        path = self._join(STORE_ID_NAME)
        self._makedirs_for(path)
        mine = secrets.token_hex(8)
        try:
            with self.fs.open(path, "xb") as f:  # exclusive create: concurrent first users agree
                f.write((mine + "\n").encode())
            return mine
        except FileExistsError:
            pass
        except (ValueError, NotImplementedError):  # a protocol without exclusive create: first writer, then read
            if not self.fs.exists(path):
                self.fs.pipe_file(path, (mine + "\n").encode())
        found = self.fs.cat_file(path).decode("utf-8").strip()
        if found:
            return found
        self.fs.pipe_file(path, (mine + "\n").encode())  # created but never written (a crash): nothing recorded it
        return mine

    def publish(self, version_id: str, source_dir: Path, *, metadata: Mapping[str, Any]) -> str:
        """Uploads ``source_dir`` to ``versions/<id>/``, then its manifest (see :class:`SharedStore.publish`)."""
        vdir = self._version(version_id)
        manifest_path = f"{vdir}/{MANIFEST_NAME}"
        self.fs.invalidate_cache(vdir)
        if self.fs.exists(manifest_path):
            try:
                return self._verify(version_id)
            except ArtifactCorruptError as exc:
                self.quarantine(version_id, reason=f"republishing over a corrupt artifact: {exc}")
        else:
            self._rm_tree(vdir)  # an interrupted upload's files: start clean
        names = _files_under(Path(source_dir))
        if not names:
            raise ValueError(f"nothing to publish: {source_dir} holds no files")
        files = {}
        for name in names:
            dest = f"{vdir}/{name}"
            self._makedirs_for(dest)
            with (Path(source_dir) / name).open("rb") as source, self.fs.open(dest, "wb") as out:
                files[name] = artifacts.copy_hashing(source, out)
        self.fs.pipe_file(manifest_path, artifacts.manifest_bytes(version_id, files, metadata))  # the commit point
        self.fs.invalidate_cache(vdir)
        return artifacts.digest_of(files)

    def _verify(self, version_id: str) -> str:
        """The digest of a stored version after hashing every file in place (read, not kept)."""
        vdir = self._version(version_id)
        where = self._where(vdir)
        files, recorded, _metadata = artifacts.parse_manifest(
            self.fs.cat_file(f"{vdir}/{MANIFEST_NAME}"), version_id, where=where
        )
        for name, expected in files.items():
            try:
                with self.fs.open(f"{vdir}/{name}", "rb") as source:
                    actual = artifacts.copy_hashing(source, _Discard())  # type: ignore[arg-type]
            except FileNotFoundError:
                raise ArtifactCorruptError(f"version {version_id!r}: {name} is missing from {where}") from None
            if actual != expected:
                raise ArtifactCorruptError(
                    f"version {version_id!r}: {name} in {where} has sha256 {actual[:12]}…, its manifest says "
                    f"{expected[:12]}…"
                )
        return recorded

    def fetch(self, version_id: str, cache: Layout, *, expected_sha256: str) -> Artifact:
        vdir = self._version(version_id)
        self.fs.invalidate_cache(vdir)
        try:
            manifest = self.fs.cat_file(f"{vdir}/{MANIFEST_NAME}")
        except FileNotFoundError:
            raise ArtifactMissingError(
                f"artifact of version {version_id!r} is missing at {self._where(vdir)} (no {MANIFEST_NAME})"
            ) from None
        return artifacts.install(
            cache,
            version_id,
            manifest,
            lambda name: self.fs.open(f"{vdir}/{name}", "rb"),
            where=self._where(vdir),
            expected_sha256=expected_sha256,
        )

    def quarantine(self, version_id: str, *, reason: str) -> str | None:
        vdir = self._version(version_id)
        self.fs.invalidate_cache(vdir)
        try:
            paths = self.fs.find(vdir)
        except FileNotFoundError:
            paths = []
        if not paths:
            return None
        dest = self._join("quarantine", f"{version_id}-{secrets.token_hex(4)}")
        manifest_path = f"{vdir}/{MANIFEST_NAME}"
        for path in sorted(paths, key=lambda p: (p != manifest_path, p)):  # the manifest first: no reader sees
            target = f"{dest}/{path[len(vdir) :].lstrip('/')}"  # a version whose files are going away
            self._makedirs_for(target)
            self.fs.mv(path, target)
        self.fs.pipe_file(f"{dest}/REASON.txt", (reason + "\n").encode())
        self._rm_tree(vdir)
        return self._where(dest)

    def remove_version(self, version_id: str) -> bool:
        vdir = self._version(version_id)
        self.fs.invalidate_cache(vdir)
        if not self.fs.exists(vdir):
            return False
        try:
            self.fs.rm_file(f"{vdir}/{MANIFEST_NAME}")  # first: the version is gone for readers at once
        except FileNotFoundError:
            pass
        self._rm_tree(vdir)
        return True

    def clean_temporaries(self, *, in_use: Callable[[str], bool] | None = None) -> list[str]:
        """Removes version directories without a manifest (interrupted uploads or deletions)."""
        complete = set(self.version_ids())
        try:
            entries = self.fs.ls(self._join("versions"), detail=True)
        except FileNotFoundError:
            return []
        removed = []
        for entry in entries:
            name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
            if entry.get("type") != "directory" or not _VERSION_ID.match(name) or name in complete:
                continue
            if in_use is not None and in_use(name):
                continue  # a live writer may still be uploading it
            self._rm_tree(self._version(name))
            removed.append(name)
        return removed

    def version_ids(self) -> list[str]:
        versions = self._join("versions")
        self.fs.invalidate_cache(versions)
        try:
            found = self.fs.glob(f"{versions}/*/{MANIFEST_NAME}")
        except FileNotFoundError:
            return []
        names = {str(p).rstrip("/").rsplit("/", 2)[-2] for p in found}
        return sorted(n for n in names if _VERSION_ID.match(n))
