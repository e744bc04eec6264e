"""Model versions: lineage, artifact location and hash, status, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, select, update

from agent.store import _convert
from agent.store._db import TableAccess
from agent.store._tables import VersionRow
from agent.store.errors import NotFoundError, VersionStateError
from agent.store.records import ModelVersion, VersionStatus

_T = VersionRow.__table__  # type: ignore[attr-defined]


def read_version(conn: Connection, version_id: str) -> ModelVersion:
    row = conn.execute(select(_T).where(_T.c.id == version_id)).mappings().first()
    if row is None:
        raise NotFoundError(
            f"model version {version_id!r} does not exist; `qtha status --json` lists versions"
        )
    return _convert.version(row)


class Versions(TableAccess):
    """The ``model_versions`` table. Champion status is only ever changed by :class:`~agent.store.Champion`."""

    def add(
        self,
        version_id: str,
        *,
        base_fingerprint: str,
        adapter_kind: str,
        artifact_path: str,
        sha256: str,
        parent_id: str | None = None,
        adapter_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        cycle_id: int | None = None,
    ) -> ModelVersion:
        """Registers a published artifact as a candidate.

        Idempotent: registering the same id with the same sha256 again returns the existing row, so a cycle
        resumed after a crash between publishing and registering can simply repeat the call.

        Raises:
            VersionStateError: the id exists with a different sha256.
        """
        with self._db.tx() as conn:
            existing = conn.execute(select(_T).where(_T.c.id == version_id)).mappings().first()
            if existing is not None:
                if existing["sha256"] != sha256:
                    raise VersionStateError(
                        f"model version {version_id!r} already exists with sha256 {existing['sha256'][:12]}…, "
                        f"not {sha256[:12]}…; choose a new version id"
                    )
                return _convert.version(existing)
            conn.execute(
                insert(_T).values(
                    id=version_id,
                    parent_id=parent_id,
                    base_fingerprint=base_fingerprint,
                    adapter_kind=adapter_kind,
                    adapter_config=dict(adapter_config or {}),
                    artifact_path=artifact_path,
                    sha256=sha256,
                    status=VersionStatus.CANDIDATE.value,
                    metrics=dict(metrics or {}),
                    created_at=self._clock.now(),
                    cycle_id=cycle_id,
                    was_champion=False,
                    pruned=False,
                )
            )
            return read_version(conn, version_id)

    def get(self, version_id: str) -> ModelVersion:
        """The version ``version_id``. Raises NotFoundError."""
        with self._db.tx(write=False) as conn:
            return read_version(conn, version_id)

    def find(self, version_id: str) -> ModelVersion | None:
        """The version ``version_id`` or None."""
        with self._db.tx(write=False) as conn:
            row = conn.execute(select(_T).where(_T.c.id == version_id)).mappings().first()
            return None if row is None else _convert.version(row)

    def list(self, *, status: VersionStatus | None = None) -> list[ModelVersion]:
        """All versions (optionally of one status), oldest first."""
        query = select(_T).order_by(_T.c.created_at, _T.c.id)
        if status is not None:
            query = query.where(_T.c.status == status.value)
        with self._db.tx(write=False) as conn:
            return [_convert.version(r) for r in conn.execute(query).mappings()]

    def reject(self, version_id: str, *, reason: str) -> ModelVersion:
        """Marks a candidate rejected (failed validation, corrupt artifact). ``reason`` goes into its metrics.

        Raises:
            VersionStateError: the version is the champion (roll back instead).
        """
        with self._db.tx(fenced=True) as conn:
            current = read_version(conn, version_id)
            if current.status is VersionStatus.CHAMPION:
                raise VersionStateError(
                    f"version {version_id!r} is the champion and cannot be rejected; roll back first"
                )
            metrics = {**current.metrics, "rejected_reason": reason}
            conn.execute(
                update(_T)
                .where(_T.c.id == version_id)
                .values(status=VersionStatus.REJECTED.value, metrics=metrics)
            )
            return read_version(conn, version_id)

    def update_metrics(self, version_id: str, metrics: Mapping[str, Any]) -> ModelVersion:
        """Merges ``metrics`` into the version's metrics."""
        with self._db.tx() as conn:
            current = read_version(conn, version_id)
            merged = {**current.metrics, **metrics}
            conn.execute(update(_T).where(_T.c.id == version_id).values(metrics=merged))
            return read_version(conn, version_id)

    def mark_pruned(self, version_id: str) -> ModelVersion:
        """Records that retention deleted the artifact (the row stays: records are never lost).

        Raises:
            VersionStateError: the version is or was champion (those artifacts are always kept).
        """
        with self._db.tx(fenced=True) as conn:
            current = read_version(conn, version_id)
            if current.was_champion:
                raise VersionStateError(
                    f"version {version_id!r} was champion; its artifact is kept for rollback and cannot be pruned"
                )
            conn.execute(update(_T).where(_T.c.id == version_id).values(pruned=True))
            return read_version(conn, version_id)
