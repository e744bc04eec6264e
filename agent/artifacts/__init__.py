"""Model versions on disk: the directory layout with digest manifests, and the registry that ties it to the store.

A version is written to a temporary directory, fsynced, renamed into ``versions/<id>/`` and verified by digest
before use; the champion pointer moves by an epoch compare-and-swap in the store. Replicas on several hosts share
one artifact store (a mounted directory or an object-store URL, :mod:`agent.artifacts.shared`) and copy each
version into their own state directory after verifying it.
"""

from agent.artifacts.layout import (
    MANIFEST_NAME,
    Artifact,
    ArtifactCorruptError,
    ArtifactMissingError,
    ArtifactNotHereError,
    Layout,
)
from agent.artifacts.registry import HousekeepingReport, Registry
from agent.artifacts.shared import DirectoryStore, SharedStore, local_copy, open_shared

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactCorruptError",
    "ArtifactMissingError",
    "ArtifactNotHereError",
    "DirectoryStore",
    "HousekeepingReport",
    "Layout",
    "Registry",
    "SharedStore",
    "local_copy",
    "open_shared",
]
