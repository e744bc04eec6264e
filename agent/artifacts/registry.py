"""The registry: artifacts on disk and version rows in the store, moved together.

The database row is the source of truth for which version is champion; the ``current`` symlink follows it. Every
move swaps the symlink while the promotion lock is held (inside the CAS transaction), so pointer swaps happen in
epoch order even with several writers; a crash between the swap and the commit is repaired by :meth:`reconcile`
at start-up. An artifact is verified (sha256) before it may serve; a corrupt one is quarantined and refused, and
the champion keeps serving.

Replicas on separate hosts share the database but not necessarily the files. Each version row records the
artifact store it was published to (``artifact_path`` is ``<store id>:versions/<id>``); only a registry whose
store is that one may judge the version (reject, quarantine, roll back or retire over it, prune it). Elsewhere a
missing or bad local copy is "not here" (:class:`ArtifactNotHereError`): the copy is set aside, the shared rows
are left alone. Rows written before store ids existed (a plain ``versions/<id>``) are judged as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import (
    Artifact,
    ArtifactCorruptError,
    ArtifactMissingError,
    ArtifactNotHereError,
    Layout,
)
from agent.artifacts.shared import DirectoryStore, SharedStore, local_copy
from agent.store import AuditKind, ChampionState, ModelVersion, Store, VersionStateError, VersionStatus

__all__ = ["HousekeepingReport", "Registry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HousekeepingReport:
    temporaries: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()
    kept: tuple[str, ...] = field(default=())


class Registry:
    """Publishes, verifies, promotes, rolls back, pins and prunes versions.

    Args:
        store: the database.
        layout: where artifacts live (``Layout(state_dir)``); with ``shared``, this host's cache of verified copies
            (``current`` always points into it).
        shared: the artifact store every replica sees (``[artifacts] root``, a directory or an object-store URL:
            :func:`agent.artifacts.shared.open_shared`): versions are published there and copied into ``layout``
            after verification. None: ``layout`` is the store (one host).
    """

    def __init__(self, store: Store, layout: Layout, *, shared: SharedStore | None = None) -> None:
        self.store = store
        self.layout = layout
        self.shared = shared
        self._store_id: str | None = None
        self._shared_id: str | None = None

    @property
    def store_id(self) -> str:
        """This registry's artifact store identity (read or created on first use, not in the constructor)."""
        if self._store_id is None:
            self._store_id = artifacts.store_identity(self.layout)
        return self._store_id

    @property
    def shared_id(self) -> str | None:
        """The shared artifact store's identity (None without one)."""
        if self.shared is not None and self._shared_id is None:
            self._shared_id = self.shared.identity()
        return self._shared_id

    def holds(self, row: ModelVersion) -> bool:
        """Whether ``row`` was published to an artifact store this registry sees (so this registry may judge it)."""
        published_to = _published_to(row)
        return published_to is None or published_to in (self.store_id, self.shared_id)

    def _publishing(self) -> tuple[SharedStore, str]:
        if self.shared is None:
            return DirectoryStore(self.layout), self.store_id
        return self.shared, str(self.shared_id)

    # -- publication -------------------------------------------------------------------------------------------

    def publish_candidate(
        self,
        version_id: str,
        source_dir: Path,
        *,
        base_fingerprint: str,
        adapter_kind: str,
        adapter_config: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        cycle_id: int | None = None,
    ) -> ModelVersion:
        """Publishes ``source_dir`` as ``versions/<version_id>/`` and registers it as a candidate.

        Idempotent (publishing and registering are), so a resumed cycle can repeat it after a crash.
        """
        target, target_id = self._publishing()
        sha256 = target.publish(
            version_id,
            source_dir,
            metadata={
                "adapter_kind": adapter_kind,
                "base_fingerprint": base_fingerprint,
                "parent_id": parent_id,
            },
        )
        return self.store.versions.add(
            version_id,
            base_fingerprint=base_fingerprint,
            adapter_kind=adapter_kind,
            adapter_config=adapter_config,
            artifact_path=f"{target_id}:versions/{version_id}",
            sha256=sha256,
            parent_id=parent_id,
            metrics=metrics,
            cycle_id=cycle_id,
        )

    def load(self, version_id: str) -> Artifact:
        """A verified artifact whose digest equals the version row's sha256 (the only way to load one).

        Raises:
            ArtifactCorruptError: files or digest differ; the artifact is quarantined and a candidate rejected.
            ArtifactMissingError: the directory is gone.
            ArtifactNotHereError: the version lives in another artifact store and this host has no intact copy
                (a bad local copy is set aside; the version's row is left alone).
        """
        row = self.store.versions.get(version_id)
        if self.shared is not None and _published_to(row) == self.shared_id:
            return self._load_shared(row)
        if not self.holds(row):
            return self._load_copy(row)
        try:
            art = artifacts.verify(self.layout, version_id)
            if art.sha256 != row.sha256:
                raise ArtifactCorruptError(
                    f"version {version_id!r}: artifact digest {art.sha256[:12]}… differs from the registered "
                    f"{row.sha256[:12]}…"
                )
        except ArtifactCorruptError as exc:
            self._refuse(row, str(exc))
            raise
        return art

    def serving(self) -> Artifact | None:
        """The verified artifact ``current`` points at (None before the first promotion).

        If it fails verification it is quarantined and the previous intact champion serves instead.
        """
        version_id = artifacts.read_current(self.layout)
        if version_id is None:
            return None
        try:
            return self.load(version_id)
        except ArtifactNotHereError as exc:
            log.warning("not serving %s on this host: %s", version_id, exc)
            return None
        except (ArtifactCorruptError, ArtifactMissingError):
            state = self.reconcile(actor="serving check")
            return None if state.version_id is None else self.load(state.version_id)

    # -- moves of the champion ---------------------------------------------------------------------------------

    def promote(
        self,
        version_id: str,
        *,
        expected_epoch: int,
        actor: str,
        reason: str,
        automatic: bool = False,
        cycle_id: int | None = None,
    ) -> ChampionState:
        """Verifies ``version_id`` and makes it champion (row CAS + ``current`` swap under one lock).

        Raises:
            ArtifactCorruptError: refused and quarantined; the champion keeps serving.
            ChampionMovedError, ChampionPinnedError, VersionStateError: see :meth:`Champion.promote`.
        """
        self.load(version_id)
        return self._move(
            lambda within: self.store.champion.promote(
                version_id,
                expected_epoch=expected_epoch,
                actor=actor,
                reason=reason,
                automatic=automatic,
                cycle_id=cycle_id,
                within=within,
            )
        )

    def rollback(self, *, actor: str, reason: str, automatic: bool = False) -> ChampionState:
        """Serves the previous champion again (skipping any whose artifact fails verification).

        Raises:
            VersionStateError: there is no earlier champion with an intact artifact.
        """
        while True:
            seen = self.store.champion.get()
            target = self.store.champion.rollback_target()
            if target is not None:
                try:
                    self.load(target.id)
                except ArtifactNotHereError as exc:  # cannot verify it here; it may be perfectly good
                    raise VersionStateError(
                        f"cannot roll back to {target.id!r} from this host: {exc}"
                    ) from exc
                except ArtifactCorruptError:
                    continue  # load() quarantined and rejected it; the next rollback_target() skips it
                except ArtifactMissingError as exc:
                    self.store.versions.reject(target.id, reason=str(exc))
                    continue
            return self._move(
                lambda within, epoch=seen.epoch: self.store.champion.rollback(
                    expected_epoch=epoch, actor=actor, reason=reason, automatic=automatic, within=within
                )
            )

    def pin(self, version_id: str | None = None, *, actor: str, reason: str) -> ChampionState:
        """Freezes the champion against automatic promotion; with ``version_id``, promotes it first."""
        seen = self.store.champion.get()
        if version_id is not None and version_id != seen.version_id:
            self.promote(version_id, expected_epoch=seen.epoch, actor=actor, reason=f"pin: {reason}")
        return self.store.champion.set_pinned(True, actor=actor, reason=reason)

    def unpin(self, *, actor: str, reason: str) -> ChampionState:
        return self.store.champion.set_pinned(False, actor=actor, reason=reason)

    # -- start-up repair and housekeeping -----------------------------------------------------------------------

    def reconcile(self, *, actor: str = "reconcile") -> ChampionState:
        """Makes ``current`` agree with the champion row, and the champion's artifact intact.

        A corrupt or missing champion artifact is quarantined and the previous intact champion serves instead —
        but only when this registry's store holds the champion: a champion published to another host's store
        that is not here is left champion (``current`` is cleared here; nothing is rejected).
        """
        state = self.store.champion.get()
        if state.version_id is not None:
            try:
                self.load(state.version_id)
            except ArtifactNotHereError as exc:
                log.warning("champion %s is not on this host, serving nothing here: %s", state.version_id, exc)
                artifacts.clear_current(self.layout)
                return state
            except (ArtifactCorruptError, ArtifactMissingError) as exc:
                return self._replace_unusable(state, f"champion artifact unusable: {exc}", actor=actor)
        return self.store.champion.hold(self._point_if_needed)

    def _replace_unusable(self, state: ChampionState, why: str, *, actor: str) -> ChampionState:
        """The champion's artifact failed verification (quarantined by load()): the previous intact champion
        serves, or the base model when there is none; never a crash loop on a broken pointer."""
        try:
            new = self.rollback(actor=actor, reason=why)
            log.warning("champion %s rolled back to %s: %s", state.version_id, new.version_id, why)
            return new
        except VersionStateError:
            pass  # no earlier intact champion
        new = self.store.champion.retire(
            expected_epoch=self.store.champion.get().epoch,
            actor=actor,
            reason=f"{why}; no earlier intact champion: serving the base model",
            within=lambda _state: artifacts.clear_current(self.layout),
        )
        log.warning(
            "champion %s retired, serving the base model (no earlier intact champion; the next cycle trains "
            "from the base): %s",
            state.version_id,
            why,
        )
        return new

    def housekeeping(
        self,
        *,
        keep_last: int,
        protect: Iterable[str] = (),
        in_use: Callable[[str], bool] | None = None,
        all_temporaries: bool = False,
    ) -> HousekeepingReport:
        """Removes temporaries and unregistered version directories, and prunes old artifacts.

        Retention keeps the newest ``keep_last`` versions, every version that was ever champion, and
        ``protect``. Rows are never deleted, only marked pruned.

        Args:
            keep_last: how many of the newest versions keep their artifacts.
            protect: version ids whose artifacts are kept regardless.
            in_use: ``in_use(version_id)`` is True while a live writer may still publish or register that
                version (the running cycle's candidate); its temporary or unregistered directory is kept.
                Checked at deletion time, so a cycle that starts meanwhile is safe too.
            all_temporaries: remove temporaries even of versions in use (at start-up, when nothing writes).
        """
        in_use = in_use or (lambda _version_id: False)
        tmp_in_use = None if all_temporaries else in_use
        places: list[SharedStore] = [DirectoryStore(self.layout)] + ([] if self.shared is None else [self.shared])
        temporaries = [name for where in places for name in where.clean_temporaries(in_use=tmp_in_use)]
        pointer_tmps: list[Path] = []
        self.store.champion.hold(
            lambda _state: pointer_tmps.extend(artifacts.clean_pointer_temporaries(self.layout))
        )
        temporaries += [p.name for p in pointer_tmps]
        rows = self.store.versions.list()
        known = {v.id for v in rows}
        keep = set(protect)
        champion = self.store.champion.get().version_id
        if champion is not None:
            keep.add(champion)
        orphans = []
        for where in places:
            for version_id in where.version_ids():
                if version_id in known or version_id in keep or in_use(version_id):
                    continue
                if self.store.versions.find(version_id) is None:  # re-read: it may have been registered meanwhile
                    where.remove_version(version_id)
                    orphans.append(version_id)
        for version in rows:  # cache copies of versions pruned elsewhere (by another node's housekeeping)
            if version.pruned and self.shared is not None:
                artifacts.remove_version(self.layout, version.id)
        live = [v for v in rows if not v.pruned]
        keep |= {v.id for v in live[-keep_last:]} if keep_last > 0 else set()
        keep |= {v.id for v in live if v.was_champion}
        pruned = []
        for version in live:
            if version.id not in keep and not in_use(version.id):
                artifacts.remove_version(self.layout, version.id)
                if self.holds(version):
                    if self.shared is not None and _published_to(version) == self.shared_id:
                        self.shared.remove_version(version.id)  # elsewhere only a local copy went; its own store decides the row
                    self.store.versions.mark_pruned(version.id)
                    pruned.append(version.id)
        return HousekeepingReport(
            temporaries=tuple(temporaries),
            orphans=tuple(orphans),
            pruned=tuple(pruned),
            kept=tuple(sorted(v.id for v in live if v.id in keep)),
        )

    # -- internals ---------------------------------------------------------------------------------------------

    def _move(self, move: Callable[[Callable[[ChampionState], None]], ChampionState]) -> ChampionState:
        swapped: list[str | None] = []

        def within(state: ChampionState) -> None:
            self._point(state)
            swapped.append(state.version_id)

        try:
            return move(within)
        except BaseException:
            # The swap happens before the commit; if the commit then failed (connection lost, disk full), put
            # ``current`` back on the committed champion rather than leave it on a version that never won.
            if swapped:
                try:
                    self.store.champion.hold(self._point_if_needed)
                except Exception:  # the database is unreachable: reconcile() repairs it at the next start
                    log.warning("could not re-point current after a failed move", exc_info=True)
            raise

    def _point(self, state: ChampionState) -> None:
        assert state.version_id is not None  # a move always names its target
        artifacts.point_current(self.layout, state.version_id)

    def _point_if_needed(self, state: ChampionState) -> None:
        if state.version_id is not None and artifacts.read_current(self.layout) != state.version_id:
            artifacts.point_current(self.layout, state.version_id)

    def _load_copy(self, row: ModelVersion) -> Artifact:
        """A verified local copy of a version published to another store; anything else is "not here"."""
        try:
            art = artifacts.verify(self.layout, row.id)
        except ArtifactMissingError:
            raise ArtifactNotHereError(
                f"version {row.id!r} was published to artifact store {_published_to(row)}, not this host's "
                f"({self.store_id}, {self.layout.state_dir}); share [artifacts] root between replicas"
            ) from None
        except ArtifactCorruptError as exc:
            why = f"local copy unusable: {exc}"
        else:
            if art.sha256 == row.sha256:
                return art
            why = f"local copy digest {art.sha256[:12]}… differs from the registered {row.sha256[:12]}…"
        artifacts.quarantine(self.layout, row.id, reason=why)  # our copy only; the version's row is not ours
        raise ArtifactNotHereError(f"version {row.id!r}: {why}; the copy was set aside")

    def _load_shared(self, row: ModelVersion) -> Artifact:
        """The verified cache copy of a version in the shared store (see :func:`local_copy`): a bad cache copy is
        only set aside and fetched again; a bad shared copy is judged."""
        assert self.shared is not None  # only called with a shared store
        try:
            return local_copy(self.layout, self.shared, row.id, expected_sha256=row.sha256)
        except ArtifactCorruptError as exc:
            self._refuse(row, str(exc), shared=True)
            raise

    def _refuse(self, row: ModelVersion, why: str, *, shared: bool = False) -> None:
        self.store.check_fence()  # only the current leader judges: a stale one must not move the files either
        if shared and self.shared is not None:
            self.shared.quarantine(row.id, reason=why)
        else:
            artifacts.quarantine(self.layout, row.id, reason=why)
        if row.status is not VersionStatus.CHAMPION:
            self.store.versions.reject(row.id, reason=why)
        self.store.audit.note(AuditKind.QUARANTINE, version_id=row.id, actor="registry", reason=why)


def _published_to(row: ModelVersion) -> str | None:
    """The store id in ``row.artifact_path`` (``<store id>:versions/<id>``); None for a row without one."""
    head, sep, _rest = row.artifact_path.partition(":")
    return head if sep and head else None
