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
from pathlib import Path
from types import MappingProxyType
from typing import Any

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
    manifest = {
        "format": MANIFEST_FORMAT,
        "version_id": version_id,
        "sha256": digest_of(files),
        "files": files,
        "metadata": dict(metadata or {}),
    }
    manifest_path = tmp / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    fsync_path(manifest_path)
    for sub in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
        fsync_path(sub)
    os.rename(tmp, target)
    fsync_path(layout.versions)
    return Artifact(
        version_id,
        target,
        manifest["sha256"],
        MappingProxyType(files),
        MappingProxyType(dict(metadata or {})),
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
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
        recorded = str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactCorruptError(f"version {version_id!r}: unreadable {MANIFEST_NAME}: {exc}") from None
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
    if digest_of(files) != recorded:
        raise ArtifactCorruptError(f"version {version_id!r}: manifest digest does not match its file list")
    return Artifact(
        version_id,
        path,
        recorded,
        MappingProxyType(files),
        MappingProxyType(dict(manifest.get("metadata") or {})),
    )


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
