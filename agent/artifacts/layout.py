"""Version artifacts on disk: atomic publication, sha256 verification, quarantine, and the ``current`` pointer.

Layout under the state directory::

    versions/<id>/          a published version: the trainer's files + artifact.json (sha256 of every file)
    versions/.tmp-*         being written or deleted; never read, removed by housekeeping
    quarantine/<id>-<hex>/  artifacts that failed verification, kept for a post-mortem
    store-id                this artifact store's identity (random, written once): a version row records the
                            store it was published to, so a replica tells "not on this host" from "corrupt"
    current -> versions/<id>   the serving pointer, a relative symlink replaced atomically

A version directory appears only by ``rename`` of a fully written and fsynced temporary directory, so a crash
leaves either no version or a complete one. This module knows nothing of the database; the registry
(:mod:`agent.artifacts.registry`) moves the pointer and the champion row together.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO, Any

from agent.files import fsync_path

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactCorruptError",
    "ArtifactMissingError",
    "ArtifactNotHereError",
    "Layout",
    "clean_pointer_temporaries",
    "clean_temporaries",
    "digest_of",
    "install",
    "manifest_bytes",
    "parse_manifest",
    "point_current",
    "publish",
    "quarantine",
    "read_current",
    "clear_current",
    "remove_version",
    "store_identity",
    "verify",
    "version_ids_on_disk",
]

MANIFEST_NAME = "artifact.json"
MANIFEST_FORMAT = 1
TMP_PREFIX = ".tmp-"
_CURRENT_TMP_PREFIX = ".current.tmp-"
_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20
STORE_ID_NAME = "store-id"


class ArtifactCorruptError(ValueError):
    """A version's files do not match the sha256 sums of its manifest (or the manifest is unreadable)."""


class ArtifactMissingError(FileNotFoundError):
    """A version directory does not exist."""


class ArtifactNotHereError(ArtifactMissingError):
    """A version was published to another artifact store (another host's state directory) and this host has no
    intact copy: it is "not here", which says nothing about the version itself. Never reject or quarantine a
    version for it; share an artifact store (``[artifacts] root``) or run where the version was published."""


@dataclass(frozen=True)
class Layout:
    """Where artifacts live under ``state_dir``."""

    state_dir: Path

    @property
    def versions(self) -> Path:
        return self.state_dir / "versions"

    @property
    def quarantine(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def current(self) -> Path:
        return self.state_dir / "current"

    @property
    def store_id_file(self) -> Path:
        return self.state_dir / STORE_ID_NAME

    def version_dir(self, version_id: str) -> Path:
        _check_id(version_id)
        return self.versions / version_id

    def ensure(self) -> None:
        for path in (self.state_dir, self.versions, self.quarantine):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Artifact:
    """A verified version on disk. ``sha256`` is the digest over all files (see :func:`digest_of`)."""

    version_id: str
    path: Path
    sha256: str
    files: Mapping[str, str]
    metadata: Mapping[str, Any]


def _check_id(version_id: str) -> None:
    if not _VERSION_ID.match(version_id):
        raise ValueError(
            f"invalid version id {version_id!r}: use 1-128 letters, digits, '.', '_' or '-', not starting "
            "with '.' or '-'"
        )


def store_identity(layout: Layout) -> str:
    """This artifact store's identity, created on first use (``O_EXCL``, so concurrent first users agree)."""
    layout.ensure()
    try:
        fd = os.open(layout.store_id_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        found = layout.store_id_file.read_text(encoding="utf-8").strip()
        if found:
            return found
        # A crash between create and write left it empty: nothing can have recorded an empty id, so rewrite it.
        fd = os.open(layout.store_id_file, os.O_WRONLY | os.O_TRUNC)
    identity = secrets.token_hex(8)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(identity + "\n")
    fsync_path(layout.store_id_file)
    fsync_path(layout.state_dir)
    return identity


def digest_of(files: Mapping[str, str]) -> str:
    """The artifact's sha256: a hash over the sorted ``(relative path, file sha256)`` pairs."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_hashing(source: IO[bytes], dest: IO[bytes]) -> str:
    """Copies ``source`` to ``dest`` in chunks and returns the sha256 of the bytes copied (one read, no second pass:
    the digest is of exactly what was written)."""
    h = hashlib.sha256()
    while chunk := source.read(_CHUNK):
        h.update(chunk)
        dest.write(chunk)
    return h.hexdigest()


def manifest_bytes(version_id: str, files: Mapping[str, str], metadata: Mapping[str, Any] | None) -> bytes:
    """The ``artifact.json`` of a version: format, id, overall digest, per-file sha256 and metadata."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "version_id": version_id,
        "sha256": digest_of(files),
        "files": dict(files),
        "metadata": dict(metadata or {}),
    }
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def parse_manifest(data: bytes, version_id: str, *, where: str) -> tuple[dict[str, str], str, dict[str, Any]]:
    """``(files, sha256, metadata)`` of a manifest read from ``where`` (a path or URL, for the message).

    Every listed name must be a plain relative path (no ``..``, no absolute path, not the manifest itself): a
    manifest from a store other hosts write to is input, and a name must never escape the version directory.

    Raises:
        ArtifactCorruptError: unreadable, inconsistent, or a name that is not a plain relative path.
    """
    try:
        manifest = json.loads(data)
        files = {str(k): str(v) for k, v in dict(manifest["files"]).items()}
        recorded = str(manifest["sha256"])
        metadata = dict(manifest.get("metadata") or {})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactCorruptError(f"version {version_id!r}: unreadable {MANIFEST_NAME} in {where}: {exc}") from None
    for name in files:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts) or (
            name == MANIFEST_NAME
        ):
            raise ArtifactCorruptError(
                f"version {version_id!r}: {MANIFEST_NAME} in {where} lists {name!r}, not a plain relative path"
            )
    if digest_of(files) != recorded:
        raise ArtifactCorruptError(
            f"version {version_id!r}: {MANIFEST_NAME} in {where}: its digest does not match its file list"
        )
    return files, recorded, metadata



def _files_under(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    )


def publish(
    layout: Layout, version_id: str, source_dir: Path, *, metadata: Mapping[str, Any] | None = None
) -> Artifact:
    """Copies ``source_dir`` into ``versions/<version_id>/`` atomically, with a sha256 manifest.

    Files are written to ``versions/.tmp-<id>-<hex>/``, fsynced (files, then directories), and the directory is
    renamed into place; the ``versions/`` directory is fsynced so the rename survives a crash.

    If the version already exists and verifies, it is returned unchanged (so a resumed cycle may publish
    again); if it exists but is corrupt, it is quarantined first.

    Raises:
        ValueError: bad version id, or ``source_dir`` holds no files.
    """
    _check_id(version_id)
    layout.ensure()
    target = layout.version_dir(version_id)
    if target.exists():
        try:
            return verify(layout, version_id)
        except ArtifactCorruptError as exc:
            quarantine(layout, version_id, reason=f"republishing over a corrupt artifact: {exc}")
    names = _files_under(Path(source_dir))
    if not names:
        raise ValueError(f"nothing to publish: {source_dir} holds no files")
    tmp = layout.versions / f"{TMP_PREFIX}{version_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    files = {}
    for name in names:
        dest = tmp / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(source_dir) / name, dest)
        fsync_path(dest)
        files[name] = _sha256_file(dest)
    _seal(layout, tmp, target, manifest_bytes(version_id, files, metadata))
    return Artifact(
        version_id,
        target,
        digest_of(files),
        MappingProxyType(files),
        MappingProxyType(dict(metadata or {})),
    )


def _seal(layout: Layout, tmp: Path, target: Path, manifest: bytes) -> None:
    """Writes the manifest into the fully written ``tmp``, fsyncs it and every directory below ``tmp``, and renames
    ``tmp`` to ``target`` (then fsyncs ``versions/`` so the rename survives a crash)."""
    manifest_path = tmp / MANIFEST_NAME
    manifest_path.write_bytes(manifest)
    fsync_path(manifest_path)
    for sub in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
        fsync_path(sub)
    os.rename(tmp, target)
    fsync_path(layout.versions)


def install(
    layout: Layout,
    version_id: str,
    manifest: bytes,
    open_file: Callable[[str], IO[bytes]],
    *,
    where: str,
    expected_sha256: str | None = None,
) -> Artifact:
    """Copies a version published elsewhere (another directory, an object store) into ``versions/<id>/``.

    Every file listed in ``manifest`` is read once through ``open_file(name)`` into ``versions/.tmp-<id>-<hex>/``
    while its sha256 is computed, and compared with the manifest; only when all match is the directory sealed and
    renamed into place, so a bad or half-read copy never becomes a version here. Files the manifest does not list
    are not copied. If the version appeared here meanwhile (a concurrent fetch), that copy is verified and used.

    Args:
        manifest: the ``artifact.json`` bytes as stored at ``where``.
        open_file: opens a listed file of the source for binary reading.
        where: the source's path or URL, for messages.
        expected_sha256: the digest the version was registered with; a manifest with another refuses the copy
            before anything is read.

    Raises:
        ArtifactCorruptError: the manifest is unreadable or differs from ``expected_sha256``, or a file is missing
            or differs from its manifest entry (the message names the file and says what to do).
    """
    target = layout.version_dir(version_id)
    files, recorded, metadata = parse_manifest(manifest, version_id, where=where)
    if expected_sha256 is not None and recorded != expected_sha256:
        raise ArtifactCorruptError(
            f"version {version_id!r}: the manifest in {where} has digest {recorded[:12]}…, which differs from the "
            f"registered {expected_sha256[:12]}…: {_ALTERED}"
        )
    layout.ensure()
    tmp = layout.versions / f"{TMP_PREFIX}{version_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, expected in sorted(files.items()):
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open_file(name) as source, dest.open("wb") as out:
                    actual = copy_hashing(source, out)
            except FileNotFoundError:
                raise ArtifactCorruptError(
                    f"version {version_id!r}: {name} is listed in its manifest but missing from {where}: {_ALTERED}"
                ) from None
            if actual != expected:
                raise ArtifactCorruptError(
                    f"version {version_id!r}: {name} in {where} has sha256 {actual[:12]}…, its manifest says "
                    f"{expected[:12]}…: {_ALTERED}"
                )
            fsync_path(dest)
        try:
            _seal(layout, tmp, target, manifest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            return verify(layout, version_id)  # a concurrent fetch installed it first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(
        version_id, target, recorded, MappingProxyType(files), MappingProxyType(metadata)
    )


_ALTERED = (
    "the stored copy was altered after publication (published versions are immutable: check what writes to "
    "[artifacts] root); it is refused and set aside, the champion keeps serving"
)


def verify(layout: Layout, version_id: str) -> Artifact:
    """Recomputes every file's sha256 and checks it against the manifest (loads must go through this).

    Raises:
        ArtifactMissingError: no such version directory.
        ArtifactCorruptError: a file differs, is missing or extra, or the manifest is unreadable (names it).
    """
    path = layout.version_dir(version_id)
    if not path.is_dir():
        raise ArtifactMissingError(f"artifact of version {version_id!r} is missing at {path}")
    try:
        data = (path / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise ArtifactCorruptError(f"version {version_id!r}: unreadable {MANIFEST_NAME}: {exc}") from None
    files, recorded, metadata = parse_manifest(data, version_id, where=str(path))
    present = _files_under(path)
    if sorted(files) != present:
        raise ArtifactCorruptError(
            f"version {version_id!r}: files {present} do not match the manifest's {sorted(files)}"
        )
    for name, expected in files.items():
        actual = _sha256_file(path / name)
        if actual != expected:
            raise ArtifactCorruptError(
                f"version {version_id!r}: {name} has sha256 {actual[:12]}…, manifest says {expected[:12]}…"
            )
    return Artifact(version_id, path, recorded, MappingProxyType(files), MappingProxyType(metadata))


def quarantine(layout: Layout, version_id: str, *, reason: str) -> Path | None:
    """Moves ``versions/<id>`` to ``quarantine/<id>-<hex>/`` with a REASON.txt; None if it was not there."""
    source = layout.version_dir(version_id)
    if not source.exists():
        return None
    layout.ensure()
    dest = layout.quarantine / f"{version_id}-{secrets.token_hex(4)}"
    os.rename(source, dest)
    (dest / "REASON.txt").write_text(reason + "\n", encoding="utf-8")
    fsync_path(layout.versions)
    fsync_path(layout.quarantine)
    return dest


def remove_version(layout: Layout, version_id: str) -> bool:
    """Deletes a version directory crash-safely (renamed to a temporary name first, so a half-deleted
    directory is never mistaken for a corrupt version). False if it was not there."""
    source = layout.version_dir(version_id)
    if not source.exists():
        return False
    doomed = layout.versions / f"{TMP_PREFIX}delete-{version_id}-{secrets.token_hex(4)}"
    os.rename(source, doomed)
    fsync_path(layout.versions)
    shutil.rmtree(doomed)
    return True


def point_current(layout: Layout, version_id: str) -> None:
    """Points ``current`` at ``versions/<id>`` atomically (temporary symlink + ``os.replace``)."""
    layout.ensure()
    target = Path("versions") / version_id
    _check_id(version_id)
    tmp = layout.state_dir / f"{_CURRENT_TMP_PREFIX}{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    os.replace(tmp, layout.current)
    fsync_path(layout.state_dir)


def read_current(layout: Layout) -> str | None:
    """The version id ``current`` points at, or None if there is no pointer.

    A ``current`` that is not a symlink (a directory or file someone put there) is moved into the quarantine,
    with a REASON.txt, and read as no pointer: the caller re-points it from the champion row.
    """
    try:
        target = Path(os.readlink(layout.current))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: it exists but is not a symlink
            raise
        layout.ensure()
        dest = layout.quarantine / f"current-{secrets.token_hex(4)}"
        os.rename(layout.current, dest)
        reason = dest / "REASON.txt" if dest.is_dir() else dest.with_name(dest.name + ".REASON.txt")
        reason.write_text("`current` was not a symlink; moved aside and re-pointed at the champion\n", encoding="utf-8")
        fsync_path(layout.state_dir)
        return None
    return target.name


def clear_current(layout: Layout) -> None:
    """Removes the ``current`` pointer (no version serves: the base model does)."""
    try:
        os.unlink(layout.current)
    except FileNotFoundError:
        return
    fsync_path(layout.state_dir)


def version_ids_on_disk(layout: Layout) -> list[str]:
    """Published version ids (temporary directories excluded)."""
    if not layout.versions.is_dir():
        return []
    return sorted(p.name for p in layout.versions.iterdir() if p.is_dir() and not p.name.startswith("."))


def _tmp_owner(name: str) -> str | None:
    """The version id a ``.tmp-<id>-<hex>`` publication directory belongs to (None for deletions)."""
    if name.startswith(f"{TMP_PREFIX}delete-"):
        return None
    return name[len(TMP_PREFIX) :].rsplit("-", 1)[0]


def clean_temporaries(layout: Layout, *, in_use: Callable[[str], bool] | None = None) -> list[Path]:
    """Removes leftovers of interrupted writes under ``versions/`` (``.tmp-*``); returns them.

    Args:
        in_use: ``in_use(version_id)`` is True while that version may still be being published by a live
            writer (e.g. the candidate of a running cycle); its temporary directory is left alone.
    """
    removed = []
    if layout.versions.is_dir():
        for path in layout.versions.iterdir():
            if not path.name.startswith(TMP_PREFIX):
                continue
            owner = _tmp_owner(path.name)
            if owner is not None and in_use is not None and in_use(owner):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
    return removed


def clean_pointer_temporaries(layout: Layout) -> list[Path]:
    """Removes ``.current.tmp-*`` symlinks left by a crash during :func:`point_current`.

    Call it while holding the promotion lock, so that it cannot remove a live swap's temporary link.
    """
    removed = []
    if layout.state_dir.is_dir():
        for path in layout.state_dir.iterdir():
            if path.name.startswith(_CURRENT_TMP_PREFIX):
                path.unlink()
                removed.append(path)
    return removed
