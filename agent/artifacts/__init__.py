"""Model versions on disk: the directory layout with digest manifests, and the registry that ties it to the store.

A version is written to a temporary directory, fsynced, renamed into ``versions/<id>/`` and verified by digest
before use; the champion pointer moves by an epoch compare-and-swap in the store.
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

__all__ = [
    "MANIFEST_NAME",
    "Artifact",
    "ArtifactCorruptError",
    "ArtifactMissingError",
    "ArtifactNotHereError",
    "HousekeepingReport",
    "Layout",
    "Registry",
]
