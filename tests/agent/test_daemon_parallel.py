"""The daemon with ``[cluster] parallel_candidates = 3`` and a stand-in trainer that can train three at once: each
cycle asks the learner three trials, trains three candidates, promotes at most one and tells every trial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime
from agent.daemon.runtime import Runtime
from agent.store import CandidateState, CycleState, VersionStatus
from tests.agent.test_daemon import _learner_trials, fast_config, started, wait_for
from tests.support.standin_trainer import StandinTrainer


@pytest.fixture
def parallel_rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "QTHA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = fast_config(tmp_path / "state", cluster={"parallel_candidates": 3})
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer(task_seed=1, slots=3)))
    rt.store.overrides.set("paused", True, actor="test", reason="fixture")
    yield rt
    rt.store.close()


def test_each_cycle_trains_three_candidates_promotes_at_most_one_and_tells_every_trial(parallel_rt: Runtime) -> None:
    rt = parallel_rt
    with started(rt) as running:
        running.applied(running.resume_and_cycle({}))  # no recipe override: the learner plans the candidates
        first = wait_for(lambda: [c for c in rt.store.cycles.list() if c.state.terminal], what="cycle 1")[0]
        wait_for(lambda: rt.store.cycles.active() is None, what="idle")
        running.applied(running.submit("cycle"))
        second = wait_for(
            lambda: [c for c in rt.store.cycles.list() if c.id != first.id and c.state.terminal], what="cycle 2"
        )[0]
        trials = wait_for(
            lambda: (t := _learner_trials(rt)) and all(x.state.is_finished() for x in t) and len(t) >= 6 and t,
            what="every trial told",
        )
    promoted = 0
    for cycle in (first, second):
        rows = rt.store.candidates.of_cycle(cycle.id)
        assert len(rows) == 3 and cycle.plan["candidates"] == 3
        chosen = [r for r in rows if r.state is CandidateState.CHOSEN]
        assert len(chosen) <= 1
        assert all(r.state in (CandidateState.CHOSEN, CandidateState.REJECTED, CandidateState.FAILED) for r in rows)
        versions = [rt.store.versions.get(r.version_id) for r in rows if r.version_id]
        champions = [v for v in versions if v.was_champion]
        assert len(champions) == (1 if cycle.state is CycleState.PROMOTED else 0)
        promoted += len(champions)
        assert all(v.status is VersionStatus.REJECTED for v in versions if not v.was_champion)
        [selection] = rt.store.decisions.list(kind="selection", cycle_id=cycle.id)
        assert len(selection.evidence["candidates"]) == 3
        assert len(rt.store.decisions.list(kind="promotion", cycle_id=cycle.id)) == 3
        assert len(rt.store.decisions.list(kind="recipe")) >= 6
    assert first.state is CycleState.PROMOTED  # no champion yet: the best of three is promoted
    second_selection = rt.store.decisions.list(kind="selection", cycle_id=second.id)[0]
    assert second_selection.evidence["correction"] == "holm"  # against a champion: corrected
    # Six trials asked (three per cycle), every one told: chosen and rejected ones complete, none left running.
    planned = sorted(r.plan["trial"] for c in (first, second) for r in rt.store.candidates.of_cycle(c.id))
    assert planned == [t.number for t in trials if t.number in planned] and len(planned) == 6
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in trials if t.number in planned)
    assert rt.store.champion.get().version_id is not None and promoted >= 1


def test_the_trainers_free_slots_and_the_setting_cap_the_candidates(tmp_path: Path) -> None:
    for wanted, slots, expected in ((3, 2, 2), (1, 4, 1), (4, 4, 4)):
        config = fast_config(tmp_path / f"state-{wanted}-{slots}", cluster={"parallel_candidates": wanted})
        trainer = StandinTrainer(slots=slots)
        asked: list[int] = []
        trainer.free_slots = lambda trainer=trainer, asked=asked: asked.append(1) or trainer.slots  # type: ignore[method-assign]
        driver = PolicyCycleDriver(lambda rt, trainer=trainer: trainer)
        rt = build_runtime(config, cycles=driver)
        try:
            assert driver._parallel_candidates(rt) == expected
            assert asked == ([] if wanted == 1 else [1])  # one candidate: the trainer is not even asked
        finally:
            rt.store.close()
