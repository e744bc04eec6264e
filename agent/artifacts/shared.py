"""The artifact store every replica sees (``[artifacts] root``): a shared directory or an object-store URL.

A version is published to the store once, with the same digest manifest as a local version, and each node copies
it into its own ``<state_dir>/versions`` (a cache only) through :meth:`SharedStore.fetch`, which verifies every
file against the manifest before the copy becomes a version there. Two kinds:

* :class:`DirectoryStore` — a plain path, a mount every host sees: the local layout's atomic rename and fsync
  (no new import).
* :class:`agent.artifacts.objectstore.ObjectStore` — a URL (``s3://bucket/prefix``, ``gs://…``, ``file:///…``,
  ``memory://…``, any fsspec protocol): files are uploaded first and the manifest last, so a reader never sees a
  manifest whose files are not all there. fsspec is imported only then (``pip install 'qtha[objectstore]'``, plus
  the protocol's package, e.g. s3fs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import Artifact, ArtifactCorruptError, ArtifactMissingError, Layout

__all__ = ["DirectoryStore", "SharedStore", "is_url", "local_copy", "open_shared"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class SharedStore(Protocol):
    """Where versions are published for every node; what the registry needs of it."""

    @property
    def location(self) -> str:
        """The path or URL, for messages."""
        ...

    def identity(self) -> str:
        """The store's identity (created on first use): version rows record it as where they were published."""
        ...

    def publish(self, version_id: str, source_dir: Path, *, metadata: Mapping[str, Any]) -> str:
        """Publishes ``source_dir`` as ``versions/<id>`` with its manifest; returns the digest. Idempotent: an intact
        published version is kept as it is; a corrupt one is set aside and published again."""
        ...

    def fetch(self, version_id: str, cache: Layout, *, expected_sha256: str) -> Artifact:
        """Copies the version into ``cache`` (which must not hold it) after verifying every file.

        Raises:
            ArtifactMissingError: the store has no (complete) version ``version_id``.
            ArtifactCorruptError: the store's copy differs from its manifest or from ``expected_sha256``.
        """
        ...

    def quarantine(self, version_id: str, *, reason: str) -> str | None:
        """Moves the version to the store's ``quarantine/`` with a REASON.txt; where it went, None if absent."""
        ...

    def remove_version(self, version_id: str) -> bool:
        """Deletes the version (its manifest first, so no reader sees a partial version); False if absent."""
        ...

    def clean_temporaries(self, *, in_use: Callable[[str], bool] | None = None) -> list[str]:
        """Removes leftovers of interrupted publications (not those of versions ``in_use``); returns their names."""
        ...

    def version_ids(self) -> list[str]:
        """Ids of the complete versions in the store."""
        ...


def is_url(root: str | Path) -> bool:
    """Whether ``[artifacts] root`` names an fsspec URL (``scheme://…``) rather than a directory."""
    return isinstance(root, str) and _URL.match(root) is not None


def open_shared(root: str | Path) -> SharedStore:
    """The shared store at ``root``: a URL opens an :class:`~agent.artifacts.objectstore.ObjectStore` (fsspec,
    imported only here), anything else is a directory.

    Raises:
        ValueError: a URL whose protocol fsspec does not know or whose package is missing (names what to install).
    """
    if is_url(root):
        from agent.artifacts.objectstore import ObjectStore  # fsspec only for URLs

        return ObjectStore(str(root))
    return DirectoryStore(Layout(Path(root)))


def local_copy(cache: Layout, shared: SharedStore, version_id: str, *, expected_sha256: str) -> Artifact:
    """This node's verified copy of a version published to ``shared``: the cache copy when it verifies and has the
    registered digest, else fetched again (a bad cache copy is moved to the cache's quarantine first). Judges
    nothing: a bad shared copy raises, and only the leader's registry rejects the version for it. For any process
    that needs a version's files on this node (the daemon's registry, ``qtha serve``, a Ray worker).

    Raises:
        ArtifactMissingError: the shared store has no such version.
        ArtifactCorruptError: the shared copy differs from its manifest or from ``expected_sha256``.
    """
    try:
        cached = artifacts.verify(cache, version_id)
        if cached.sha256 == expected_sha256:
            return cached
        why = f"digest {cached.sha256[:12]}… differs from the registered {expected_sha256[:12]}…"
    except ArtifactMissingError:
        why = ""
    except ArtifactCorruptError as exc:
        why = str(exc)
    if why:
        artifacts.quarantine(cache, version_id, reason=f"cache copy unusable, fetched again: {why}")
    # Verified file by file into a temporary directory of the cache, renamed into place only when intact.
    return shared.fetch(version_id, cache, expected_sha256=expected_sha256)


class DirectoryStore:
    """A directory as the shared store (or a node's own state directory, for housekeeping): the local layout."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def location(self) -> str:
        return str(self.layout.state_dir)

    def identity(self) -> str:
        return artifacts.store_identity(self.layout)

    def publish(self, version_id: str, source_dir: Path, *, metadata: Mapping[str, Any]) -> str:
        return artifacts.publish(self.layout, version_id, source_dir, metadata=metadata).sha256

    def fetch(self, version_id: str, cache: Layout, *, expected_sha256: str) -> Artifact:
        path = self.layout.version_dir(version_id)
        if not path.is_dir():
            raise ArtifactMissingError(f"artifact of version {version_id!r} is missing at {path}")
        try:  # a version directory appears only by rename, with its manifest: without one it is damaged
            manifest = (path / artifacts.MANIFEST_NAME).read_bytes()
        except OSError as exc:
            raise ArtifactCorruptError(
                f"version {version_id!r}: unreadable {artifacts.MANIFEST_NAME} in {path}: {exc}"
            ) from None
        return artifacts.install(
            cache,
            version_id,
            manifest,
            lambda name: (path / name).open("rb"),
            where=str(path),
            expected_sha256=expected_sha256,
        )

    def quarantine(self, version_id: str, *, reason: str) -> str | None:
        dest = artifacts.quarantine(self.layout, version_id, reason=reason)
        return None if dest is None else str(dest)

    def remove_version(self, version_id: str) -> bool:
        return artifacts.remove_version(self.layout, version_id)

    def clean_temporaries(self, *, in_use: Callable[[str], bool] | None = None) -> list[str]:
        return [p.name for p in artifacts.clean_temporaries(self.layout, in_use=in_use)]

    def version_ids(self) -> list[str]:
        return artifacts.version_ids_on_disk(self.layout)
