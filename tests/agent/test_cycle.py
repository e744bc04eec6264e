"""The cycle state machine on the stand-in trainer: transitions, resume from checkpoints, failures, fencing."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.cycle.machine import CycleRunner, candidate_id_for
from agent.cycle.plan import CyclePlan
from agent.cycle.trainer import EvalOutcome, GateDecision, latest_checkpoint
from agent.store import (
    CycleAlreadyRunningError,
    CycleState,
    Store,
    VersionStatus,
    open_store,
)
from tests.support.standin_trainer import StandinTrainer, mean_gain_gate, standin_recipe

RECIPE = standin_recipe(steps=12, learning_rate=0.05, batch_size=8, seed=3)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.hooks: dict[str, Any] = {}

    def __call__(self, name: str, fields: Mapping[str, Any]) -> None:
        self.seen.append((name, dict(fields)))
        if name in self.hooks:
            self.hooks[name](fields)

    def transitions(self) -> list[str]:
        return [f"{f['from']}>{f['to']}" for n, f in self.seen if n == "state"]


def _runner(
    store: Store,
    state_dir: Path,
    *,
    owner: str = "proc-a",
    trainer: StandinTrainer | None = None,
    gate: Any = None,
    events: Events | None = None,
    **kw: Any,
) -> CycleRunner:
    return CycleRunner(
        Registry(store, Layout(state_dir)),
        trainer or StandinTrainer(task_seed=1),
        gate or mean_gain_gate(0.0),
        owner=owner,
        workdirs=state_dir / "cycles",
        on_event=events,
        **kw,
    )


def test_first_cycle_promotes_through_every_state(store: Store, state_dir: Path) -> None:
    events = Events()
    cycle = _runner(store, state_dir, events=events).run(trigger_reasons=["bootstrap"], recipe=RECIPE)
    assert cycle.state is CycleState.PROMOTED and cycle.outcome == "promoted c000001 at epoch 1"
    assert events.transitions() == ["observe>plan", "plan>train", "train>validate", "validate>promote"]
    assert [f["step"] for n, f in events.seen if n == "checkpoint"] == list(range(1, 13))
    champion = store.champion.get()
    assert champion.version_id == candidate_id_for(cycle.id) == artifacts.read_current(Layout(state_dir))
    version = store.versions.get(champion.version_id)
    assert version.status is VersionStatus.CHAMPION and version.metrics["steps"] == 12
    assert version.metrics["eval_mse"] < 1.0  # learned: the zero model's MSE on this task is ~9
    [decision] = store.decisions.list(cycle_id=cycle.id)
    assert decision.action == "promote" and decision.reasons == ("no champion yet",)


def test_a_worse_candidate_is_rejected_and_the_champion_stays(store: Store, state_dir: Path) -> None:
    runner = _runner(store, state_dir)
    runner.run(trigger_reasons=["bootstrap"], recipe=RECIPE)
    strict = _runner(store, state_dir, gate=mean_gain_gate(min_gain=100.0))
    cycle = strict.run(trigger_reasons=["drift"], recipe=dataclasses.replace(RECIPE, seed=4))
    assert cycle.state is CycleState.REJECTED and cycle.outcome.startswith("rejected: mean gain")  # type: ignore[union-attr]
    assert store.versions.get(candidate_id_for(cycle.id)).status is VersionStatus.REJECTED
    assert store.champion.get().version_id == "c000001" and store.champion.get().epoch == 1
    assert store.decisions.list(cycle_id=cycle.id)[0].evidence["min_gain"] == 100.0


def test_interrupted_training_resumes_from_its_checkpoint_bit_for_bit(
    sqlite_store: Store, state_dir: Path, tmp_path: Path, fake_clock: Any
) -> None:
    stopping = StandinTrainer(task_seed=1, stop_after_steps=5)
    cycle = _runner(sqlite_store, state_dir, trainer=stopping).run(trigger_reasons=["t"], recipe=RECIPE)
    assert cycle.state is CycleState.TRAIN and cycle.owner == "proc-a"
    assert latest_checkpoint(state_dir / "cycles" / str(cycle.id)).name == "step-00000005"  # type: ignore[union-attr]

    events = Events()
    restarted = _runner(sqlite_store, state_dir, owner="proc-b", events=events)
    adopted = restarted.start()
    assert adopted is not None and adopted.owner == "proc-b" and adopted.resumes == 1
    done = restarted.resume(adopted)
    assert done.state is CycleState.PROMOTED
    [train] = [f for n, f in events.seen if n == "train"]
    assert train["resume_from"].endswith("step-00000005")
    assert [f["step"] for n, f in events.seen if n == "checkpoint"] == list(range(6, 13))

    # The same recipe without interruption, in another state dir, gives the identical artifact.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = open_store(f"sqlite:///{other_dir / 'db.sqlite'}", clock=fake_clock)
    _runner(other, other_dir).run(trigger_reasons=["t"], recipe=RECIPE)
    assert other.versions.get("c000001").sha256 == sqlite_store.versions.get("c000001").sha256
    other.close()


def test_a_cycle_interrupted_too_often_is_failed_with_the_reason(
    sqlite_store: Store, state_dir: Path
) -> None:
    stopping = StandinTrainer(task_seed=1, stop_after_steps=1)
    cycle = _runner(sqlite_store, state_dir, trainer=stopping, max_resumes=2).run(
        trigger_reasons=["t"], recipe=RECIPE
    )
    for i in range(2):
        runner = _runner(sqlite_store, state_dir, owner=f"p{i}", trainer=stopping, max_resumes=2)
        adopted = runner.start()
        assert adopted is not None and adopted.resumes == i + 1
        assert runner.resume(adopted).state is CycleState.TRAIN
    last = _runner(sqlite_store, state_dir, owner="p-last", max_resumes=2)
    assert last.start() is None
    failed = sqlite_store.cycles.get(cycle.id)
    assert failed.state is CycleState.FAILED and failed.owner == "p-last"
    assert failed.error == "interrupted 3 times (last in state train, previous owner p1); not resumed again"
    assert not (state_dir / "cycles" / str(cycle.id)).exists()  # housekeeping removed its work directory


def test_only_one_cycle_at_a_time_across_runners(sqlite_store: Store, state_dir: Path) -> None:
    stopping = StandinTrainer(task_seed=1, stop_after_steps=2)
    first = _runner(sqlite_store, state_dir, trainer=stopping).run(trigger_reasons=["t"], recipe=RECIPE)
    with pytest.raises(CycleAlreadyRunningError, match=f"cycle {first.id} \\(train, owner proc-a\\)"):
        _runner(sqlite_store, state_dir, owner="proc-b").run(trigger_reasons=["t"], recipe=RECIPE)


def test_a_trainer_error_fails_the_cycle_with_its_reason(sqlite_store: Store, state_dir: Path) -> None:
    class Broken(StandinTrainer):
        def evaluate(self, artifact_dir: Path, *, version_id: str, window: int | None = None) -> EvalOutcome:
            raise FloatingPointError("eval loss is NaN")

    cycle = _runner(sqlite_store, state_dir, trainer=Broken()).run(trigger_reasons=["t"], recipe=RECIPE)
    assert cycle.state is CycleState.FAILED
    assert cycle.error == "validate: FloatingPointError: eval loss is NaN"
    assert sqlite_store.cycles.active() is None


def test_flipped_byte_in_a_candidate_is_refused_and_the_champion_keeps_serving(
    sqlite_store: Store, state_dir: Path
) -> None:
    _runner(sqlite_store, state_dir).run(trigger_reasons=["bootstrap"], recipe=RECIPE)
    events = Events()

    def flip(fields: Mapping[str, Any]) -> None:
        path = state_dir / "versions" / fields["version"] / "weights.npy"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))

    events.hooks["published"] = flip
    cycle = _runner(sqlite_store, state_dir, events=events).run(
        trigger_reasons=["t"], recipe=dataclasses.replace(RECIPE, seed=9)
    )
    assert cycle.state is CycleState.REJECTED and "weights.npy has sha256" in (cycle.outcome or "")
    assert sqlite_store.versions.get("c000002").status is VersionStatus.REJECTED
    assert sqlite_store.champion.get().version_id == artifacts.read_current(Layout(state_dir)) == "c000001"
    assert [p.name[:8] for p in (state_dir / "quarantine").iterdir()] == ["c000002-"]


def test_champion_moved_during_validation_fails_the_stale_comparison(
    sqlite_store: Store, state_dir: Path
) -> None:
    registry = Registry(sqlite_store, Layout(state_dir))
    _runner(sqlite_store, state_dir).run(trigger_reasons=["bootstrap"], recipe=RECIPE)
    operator_src = state_dir / "operator-src"
    operator_src.mkdir()
    (operator_src / "weights.npy").write_bytes(
        (state_dir / "versions" / "c000001" / "weights.npy").read_bytes()
    )
    registry.publish_candidate("op-1", operator_src, base_fingerprint="b", adapter_kind="linear")

    def gate_while_operator_moves(c: EvalOutcome, ch: EvalOutcome | None, now: datetime) -> GateDecision:
        state = sqlite_store.champion.get()
        registry.promote("op-1", expected_epoch=state.epoch, actor="operator", reason="manual")
        return GateDecision("promote", ("better",))

    cycle = _runner(sqlite_store, state_dir, gate=gate_while_operator_moves).run(
        trigger_reasons=["t"], recipe=dataclasses.replace(RECIPE, seed=6)
    )
    assert cycle.state is CycleState.FAILED and cycle.error.startswith("champion moved since validation")  # type: ignore[union-attr]
    assert sqlite_store.champion.get().version_id == artifacts.read_current(Layout(state_dir)) == "op-1"


def test_pinned_champion_and_hold_decisions_do_not_promote(sqlite_store: Store, state_dir: Path) -> None:
    runner = _runner(sqlite_store, state_dir)
    runner.run(trigger_reasons=["bootstrap"], recipe=RECIPE)
    runner.registry.pin(actor="operator", reason="demo")
    pinned = runner.run(trigger_reasons=["t"], recipe=dataclasses.replace(RECIPE, steps=30))
    assert pinned.state is CycleState.REJECTED and "is pinned" in (pinned.outcome or "")
    runner.registry.unpin(actor="operator", reason="done")

    def hold(c: EvalOutcome, ch: EvalOutcome | None, now: datetime) -> GateDecision:
        return GateDecision("hold", ("slice 'hard' too small to judge",))

    held = _runner(sqlite_store, state_dir, gate=hold).run(trigger_reasons=["t"], recipe=RECIPE)
    assert held.state is CycleState.HELD and held.outcome == "held for an operator: slice 'hard' too small to judge"
    assert sqlite_store.versions.get(candidate_id_for(held.id)).status is VersionStatus.CANDIDATE
    assert sqlite_store.champion.get().version_id == "c000001"


def test_an_adopted_cycle_stops_its_old_owner_at_the_next_checkpoint(
    sqlite_store: Store, state_dir: Path
) -> None:
    events = Events()
    taken = {}

    def take_over(fields: Mapping[str, Any]) -> None:
        if fields["step"] == 3 and not taken:
            taken["cycle"] = sqlite_store.cycles.adopt(
                fields["cycle"], expected_owner="proc-a", owner="proc-b"
            )

    events.hooks["checkpoint"] = take_over
    cycle = _runner(sqlite_store, state_dir, events=events).run(trigger_reasons=["t"], recipe=RECIPE)
    assert cycle.state is CycleState.TRAIN and cycle.owner == "proc-b"
    assert [f["step"] for n, f in events.seen if n == "checkpoint"] == [1, 2, 3]
    assert sqlite_store.versions.list() == []


def test_start_cleans_temporaries_and_finished_work_directories(sqlite_store: Store, state_dir: Path) -> None:
    runner = _runner(sqlite_store, state_dir)
    done = runner.run(trigger_reasons=["t"], recipe=RECIPE)
    (state_dir / "versions" / ".tmp-c000009-dead").mkdir()
    (state_dir / ".current.tmp-beef").symlink_to("versions/c000001")
    assert (state_dir / "cycles" / str(done.id)).is_dir()
    assert _runner(sqlite_store, state_dir, owner="proc-b").start() is None
    leftovers = [p for p in state_dir.rglob("*") if ".tmp-" in p.name]
    assert leftovers == [] and list((state_dir / "cycles").iterdir()) == []
    assert artifacts.read_current(Layout(state_dir)) == "c000001"


def test_budget_charges_a_finished_cycle_its_measured_training_cpu_time(sqlite_store: Store, state_dir: Path) -> None:
    from agent.daemon.policy_inputs import cycle_records, cycle_spend

    runner = _runner(sqlite_store, state_dir)
    cycle = runner.run(
        trigger_reasons=["bootstrap"], recipe=dataclasses.replace(RECIPE, steps=400), plan=CyclePlan(planned_cpu_s=5000.0)
    )
    measured = sqlite_store.versions.get(cycle.candidate_id).metrics["train_cpu_s"]
    assert 0.0 < measured < 5000.0  # 400 numpy steps on 64 rows: far below the plan's estimate
    assert cycle_spend(sqlite_store, cycle).cpu_seconds == pytest.approx(measured)
    [record] = cycle_records(sqlite_store)
    assert record.outcome == "promoted" and record.spend.cpu_seconds == pytest.approx(measured)
    # Before training has published a candidate, the plan's estimate is what the budget holds back.
    running = dataclasses.replace(cycle, state=CycleState.TRAIN, candidate_id=None, finished_at=None)
    assert cycle_spend(sqlite_store, running).cpu_seconds == 5000.0


def test_cost_model_is_calibrated_on_measured_cycles_without_compounding(sqlite_store: Store, state_dir: Path) -> None:
    from agent.daemon.policy_inputs import calibrated_cost_model, cpu_history

    runner = _runner(sqlite_store, state_dir)
    assert calibrated_cost_model(sqlite_store)[1] == 1.0  # no history yet
    first = runner.run(trigger_reasons=["bootstrap"], recipe=RECIPE, plan=CyclePlan(planned_cpu_s=1e-3))
    measured = sqlite_store.versions.get(first.candidate_id).metrics["train_cpu_s"]
    # The second cycle's plan came from a model already scaled ×4: its pair is divided back to the reference.
    second = runner.run(
        trigger_reasons=["drift"], recipe=RECIPE, plan=CyclePlan(planned_cpu_s=4e-3, cpu_calibration=4.0)
    )
    measured_2 = sqlite_store.versions.get(second.candidate_id).metrics["train_cpu_s"]
    assert cpu_history(sqlite_store) == [(pytest.approx(1e-3), measured), (pytest.approx(1e-3), measured_2)]
    model, factor = calibrated_cost_model(sqlite_store)
    ratio = statistics.median([measured / 1e-3, measured_2 / 1e-3])
    assert factor == pytest.approx(min(max(ratio, 0.1), 20.0))
    assert model.base_step_cpu_s == pytest.approx(1.4 * factor)
