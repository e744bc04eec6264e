"""A cycle that trains several candidates at once (stand-in trainer): each its own version and work directory,
trained at the same time, judged together under Holm's correction, at most one promoted, failures kept to the
candidate, interruption resumes only what is left."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import policies
from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.cycle.machine import CycleRunner, candidate_id_for
from agent.cycle.plan import CyclePlan
from agent.cycle.trainer import CycleInterrupted
from agent.store import CandidateState, CycleState, Store, VersionStatus
from tests.support.standin_trainer import StandinTrainer, holm_selector, mean_gain_gate, standin_recipe


def _runner(store: Store, state_dir: Path, trainer: StandinTrainer, **kw: Any) -> CycleRunner:
    return CycleRunner(
        Registry(store, Layout(state_dir)),
        trainer,
        mean_gain_gate(0.0),
        owner="proc-a",
        workdirs=state_dir / "cycles",
        selector=holm_selector(),
        **kw,
    )


def _champion(store: Store, state_dir: Path) -> str:
    """A first, weak champion (three steps) for the candidates to beat."""
    cycle = _runner(store, state_dir, StandinTrainer(task_seed=1)).run(
        trigger_reasons=["bootstrap"], recipe=standin_recipe(steps=3, learning_rate=0.02)
    )
    assert cycle.state is CycleState.PROMOTED
    return str(cycle.candidate_id)


def _more(*recipes: policies.Recipe) -> list[tuple[policies.Recipe, CyclePlan]]:
    return [(r, CyclePlan(trial=i + 10, planned_cpu_s=5.0)) for i, r in enumerate(recipes)]


class Together(StandinTrainer):
    """Waits at a barrier before training: the calls must run at the same time or the barrier breaks."""

    def __init__(self, parties: int, **kw: Any) -> None:
        super().__init__(task_seed=1, slots=parties, **kw)
        self.barrier = threading.Barrier(parties, timeout=30)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self.barrier.wait()
        return super().train(*args, **kwargs)


def test_three_candidates_train_at_once_and_at_most_one_is_promoted(store: Store, state_dir: Path) -> None:
    first = _champion(store, state_dir)
    trainer = Together(3)
    cycle = _runner(store, state_dir, trainer).run(
        trigger_reasons=["test"],
        recipe=standin_recipe(steps=40, seed=1),
        plan=CyclePlan(trial=9, planned_cpu_s=5.0),
        more=_more(standin_recipe(steps=2, learning_rate=0.001, seed=2), standin_recipe(steps=60, seed=3)),
    )
    assert cycle.state is CycleState.PROMOTED, cycle.outcome or cycle.error
    assert trainer.train_calls == 3 and trainer.barrier.n_waiting == 0 and not trainer.barrier.broken
    ids = [candidate_id_for(cycle.id), candidate_id_for(cycle.id, 2), candidate_id_for(cycle.id, 3)]
    assert ids == ["c000002", "c000002-2", "c000002-3"]
    champion = store.champion.get().version_id
    assert champion in ids and champion == cycle.candidate_id
    statuses = {v: store.versions.get(v).status for v in ids}
    assert list(statuses.values()).count(VersionStatus.CHAMPION) == 1
    assert all(s is VersionStatus.REJECTED for v, s in statuses.items() if v != champion)
    assert store.versions.get(first).status is VersionStatus.RETIRED
    # Every candidate is recorded with its verdict; the plan reserved the spend of all three.
    rows = store.candidates.of_cycle(cycle.id)
    assert [(r.slot, r.version_id) for r in rows] == [(1, ids[0]), (2, ids[1]), (3, ids[2])]
    assert [r.state for r in rows].count(CandidateState.CHOSEN) == 1
    assert all(r.outcome and "gain" in r.evidence for r in rows)
    assert [r.plan["trial"] for r in rows] == [9, 10, 11]
    assert (cycle.plan["planned_cpu_s"], cycle.plan["candidates"]) == (15.0, 3)
    # The decision log: one promotion decision per candidate and the selection with the correction.
    decisions = store.decisions.list(cycle_id=cycle.id)
    assert sorted(d.evidence["candidate"] for d in decisions if d.kind == "promotion") == sorted(ids)
    [selection] = [d for d in decisions if d.kind == "selection"]
    assert selection.action == "promote" and selection.evidence["correction"] == "holm"
    assert selection.evidence["winner"] == champion and len(selection.evidence["candidates"]) == 3
    # The console's card of the cycle shows the chosen candidate's promotion decision, whatever the order recorded.
    from agent.console.view import load_cycle

    assert load_cycle(store, cycle.id).promotion.evidence["candidate"] == champion  # type: ignore[union-attr]
    # Each trained in its own directory inside the cycle's.
    workdir = state_dir / "cycles" / str(cycle.id)
    assert (workdir / "recipe.json").exists() and (workdir / "candidate-3" / "recipe.json").exists()


def test_a_failed_candidate_is_recorded_and_the_others_are_judged(store: Store, state_dir: Path) -> None:
    _champion(store, state_dir)

    class FailsSeed7(StandinTrainer):
        def train(self, recipe: policies.Recipe, *args: Any, **kwargs: Any) -> Any:
            if recipe.seed == 7:
                raise RuntimeError("out of memory on this one")
            return super().train(recipe, *args, **kwargs)

    cycle = _runner(store, state_dir, FailsSeed7(task_seed=1, slots=2)).run(
        trigger_reasons=["test"], recipe=standin_recipe(steps=7, seed=7), more=_more(standin_recipe(steps=40))
    )
    assert cycle.state is CycleState.PROMOTED and cycle.candidate_id == "c000002-2"
    failed, chosen = store.candidates.of_cycle(cycle.id)
    assert failed.state is CandidateState.FAILED and "out of memory on this one" in (failed.outcome or "")
    assert failed.version_id is None and chosen.state is CandidateState.CHOSEN


def test_a_refused_self_improvement_round_is_that_candidates_verdict(store: Store, state_dir: Path) -> None:
    from agent.cycle.trainer import DataRefusedError

    _champion(store, state_dir)
    metrics = {"si_drawn": 8, "si_verified": 0, "si_used": 0, "si_prompts": 4, "si_pass_at_k": 0.0,
               "si_distinct3": 0.1, "si_sampling_cpu_s": 12.0}

    class RefusesSeed5(StandinTrainer):
        def train(self, recipe: policies.Recipe, *args: Any, **kwargs: Any) -> Any:
            if recipe.seed == 5:
                raise DataRefusedError("nothing verified: collapse", metrics)
            return super().train(recipe, *args, **kwargs)

    cycle = _runner(store, state_dir, RefusesSeed5(task_seed=1, slots=2)).run(
        trigger_reasons=["test"], recipe=standin_recipe(seed=5), more=_more(standin_recipe(steps=40))
    )
    assert cycle.state is CycleState.PROMOTED and cycle.candidate_id == "c000002-2"
    refused = store.candidates.of_cycle(cycle.id)[0]
    assert refused.state is CandidateState.REJECTED and "collapse" in (refused.outcome or "")
    assert dict(refused.evidence) == {"gain": 0.0, "sampling_cpu_s": 12.0}  # told to the learner: no gain, at a cost
    [stop] = store.decisions.list(kind="self-improve", cycle_id=cycle.id)
    assert stop.action == "stop"


def test_all_candidates_failing_fails_the_cycle_with_each_reason(store: Store, state_dir: Path) -> None:
    class Fails(StandinTrainer):
        def train(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken")

    cycle = _runner(store, state_dir, Fails(slots=2)).run(
        trigger_reasons=["test"], recipe=standin_recipe(), more=_more(standin_recipe(seed=1))
    )
    assert cycle.state is CycleState.FAILED
    assert "all 2 candidates failed" in (cycle.error or "") and (cycle.error or "").count("broken") == 2


def test_an_interrupted_cycle_resumes_only_the_candidates_left(store: Store, state_dir: Path) -> None:
    _champion(store, state_dir)

    class StopsOnSlowOne(StandinTrainer):
        def train(self, recipe: policies.Recipe, *args: Any, **kwargs: Any) -> Any:
            if recipe.steps == 30 and self.stop_requested:
                raise CycleInterrupted("stop requested")
            return super().train(recipe, *args, **kwargs)

    trainer = StopsOnSlowOne(task_seed=1, slots=2)
    trainer.stop_requested = True  # type: ignore[attr-defined]
    runner = _runner(store, state_dir, trainer)
    cycle = runner.run(trigger_reasons=["test"], recipe=standin_recipe(steps=40), more=_more(standin_recipe(steps=30)))
    assert cycle.state is CycleState.TRAIN  # resumable
    assert [r.state for r in store.candidates.of_cycle(cycle.id)] == [CandidateState.TRAINED, CandidateState.PLANNED]
    trainer.stop_requested = False  # type: ignore[attr-defined]
    calls = trainer.train_calls
    done = runner.resume(cycle)
    assert trainer.train_calls == calls + 1  # only the second candidate trained again
    assert done.state in (CycleState.PROMOTED, CycleState.REJECTED)
    assert [r.version_id for r in store.candidates.of_cycle(cycle.id)] == ["c000002", "c000002-2"]


def test_several_candidates_need_a_selector(store: Store, state_dir: Path) -> None:
    runner = CycleRunner(
        Registry(store, Layout(state_dir)), StandinTrainer(), mean_gain_gate(), owner="a", workdirs=state_dir / "c"
    )
    with pytest.raises(ValueError, match="selector"):
        runner.run(trigger_reasons=["t"], recipe=standin_recipe(), more=_more(standin_recipe(seed=1)))
    assert store.cycles.list() == []


def test_fan_out_runs_at_once_and_the_most_serious_stop_wins() -> None:
    from agent.cycle.parallel import cycle_stopper, fan_out
    from agent.store import StaleEpochError

    barrier = threading.Barrier(3, timeout=30)

    def work(i: int) -> int:
        barrier.wait()  # breaks (an error, not a hang) unless all three run at the same time
        if i == 1:
            raise CycleInterrupted("stop")
        if i == 2:
            raise StaleEpochError("lease lost")
        return i

    results = fan_out([0, 1, 2], work, name="t")
    assert results[0] == 0 and isinstance(results[1], CycleInterrupted) and isinstance(results[2], StaleEpochError)
    assert cycle_stopper(results) is results[2] and cycle_stopper([0, RuntimeError("one candidate")]) is None
