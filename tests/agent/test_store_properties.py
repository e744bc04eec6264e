"""Model-based property test: random sequences of champion moves agree with a tiny reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.store import (
    AuditKind,
    ChampionMovedError,
    ChampionPinnedError,
    VersionStateError,
    VersionStatus,
    open_store,
)

VERSIONS = ("v0", "v1", "v2", "v3")

operations = st.lists(
    st.one_of(
        st.tuples(st.just("promote"), st.sampled_from(VERSIONS), st.booleans(), st.booleans()),
        st.tuples(st.just("rollback")),
        st.tuples(st.just("pin"), st.booleans()),
        st.tuples(st.just("reject"), st.sampled_from(VERSIONS)),
    ),
    max_size=25,
)


@dataclass
class Model:
    """What the champion should be, computed without a database."""

    champion: str | None = None
    epoch: int = 0
    pinned: bool = False
    rejected: set[str] = field(default_factory=set)
    served: list[str] = field(default_factory=list)

    def move(self, target: str, *, reject_current: bool) -> None:
        if reject_current and self.champion is not None:
            self.rejected.add(self.champion)
        self.champion, self.epoch = target, self.epoch + 1
        self.served.append(target)

    def rollback_target(self) -> str | None:
        for version in reversed(self.served):
            if version != self.champion and version not in self.rejected:
                return version
        return None


@settings(max_examples=40, deadline=None)
@given(ops=operations)
def test_random_champion_moves_match_the_reference_model(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    store = open_store("sqlite:///:memory:", clock=FakeClock())
    for v in VERSIONS:
        store.versions.add(v, base_fingerprint="b", adapter_kind="lora", artifact_path=v, sha256="0" * 64)
    model = Model()
    try:
        for op in ops:
            if op[0] == "promote":
                _, target, stale, automatic = op
                expected = model.epoch - 1 if stale and model.epoch > 0 else model.epoch
                try:
                    store.champion.promote(
                        target, expected_epoch=expected, actor="t", reason="r", automatic=automatic
                    )
                    outcome = "moved"
                except ChampionMovedError:
                    outcome = "moved-error"
                except ChampionPinnedError:
                    outcome = "pinned"
                except VersionStateError:
                    outcome = "refused"
                if expected != model.epoch:
                    assert outcome == "moved-error"
                elif automatic and model.pinned:
                    assert outcome == "pinned"
                elif target == model.champion or target in model.rejected:
                    assert outcome == "refused"
                else:
                    assert outcome == "moved"
                    model.move(target, reject_current=False)
            elif op[0] == "rollback":
                target = model.rollback_target()
                try:
                    state = store.champion.rollback(expected_epoch=model.epoch, actor="t", reason="r")
                    assert state.version_id == target
                    model.move(target, reject_current=True)  # type: ignore[arg-type]
                except VersionStateError:
                    assert target is None
            elif op[0] == "pin":
                store.champion.set_pinned(op[1], actor="t", reason="r")
                model.pinned = op[1]
            else:
                try:
                    store.versions.reject(op[1], reason="r")
                    assert op[1] != model.champion
                    model.rejected.add(op[1])
                except VersionStateError:
                    assert op[1] == model.champion
            state = store.champion.get()
            assert (state.version_id, state.epoch, state.pinned) == (
                model.champion,
                model.epoch,
                model.pinned,
            )
            champions = [v.id for v in store.versions.list(status=VersionStatus.CHAMPION)]
            assert champions == ([model.champion] if model.champion else [])
        serves = store.audit.entries(kind=AuditKind.SERVE)
        assert [e.version_id for e in serves] == model.served
        assert [e.epoch for e in serves] == list(range(1, model.epoch + 1))
    finally:
        store.close()
