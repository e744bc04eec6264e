"""The held-out pool: rotating samples for the scheduled evaluation, the operator's inbox data held out by a stable
hash and judged per slice, and an evaluation cache that keys on both."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import policies
from agent.child.datasplit import is_held_out, split_inbox
from agent.child.runner import ChildOutcome
from agent.child.tasks import _heldout, _training_examples
from agent.child.trainer import ChildTrainer
from agent.clock import FakeClock
from agent.config import load_config
from agent.cycle.trainer import EvalOutcome
from agent.daemon import jobs
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.gate import make_gate
from agent.daemon.inbox import Example
from agent.daemon.lifecycle import build_runtime
from tests.agent.test_daemon import fast_config
from tests.support.standin_trainer import StandinTrainer, standin_recipe


def _payload(dataset: Path, **extra: object) -> dict:
    return {
        "task": "maths", "data_seed": 0, "eval_examples": 12, "eval_pool_examples": 120, "dataset_dir": str(dataset),
        "heldout_fraction": 0.2, "eval_inbox_max": 96, **extra,
    }


def test_each_window_draws_a_fresh_sample_of_the_pool_and_the_fixed_set_stays_fixed(tmp_path: Path) -> None:
    fixed = [e.example_id for e in _heldout(_payload(tmp_path))]
    assert fixed == [e.example_id for e in _heldout(_payload(tmp_path))] and len(fixed) == 12
    windows = {w: [e.example_id for e in _heldout(_payload(tmp_path, eval_window=w))] for w in (1, 2, 3)}
    assert all(len(ids) == 12 for ids in windows.values())
    assert windows[1] == [e.example_id for e in _heldout(_payload(tmp_path, eval_window=1))]  # a window is reproducible
    assert len({tuple(ids) for ids in windows.values()} | {tuple(fixed)}) == 4  # …and differs from the others
    pool = {e.example_id for e in _heldout(_payload(tmp_path, eval_examples=120))}
    assert set().union(*windows.values()) <= pool  # drawn from the same held-out pool (the test split)


def _write_inbox(dataset: Path) -> list[Example]:
    dataset.mkdir(parents=True, exist_ok=True)
    geometry = [Example(f"How many sides has shape {i}?", str(i % 9 + 3), slice="geometry") for i in range(150)]
    orders = [Example(f"Order {i}: total of 2 items at {i} each?", str(2 * i)) for i in range(150)]
    (dataset / "20260101T000000000000-geo.jsonl").write_text("".join(e.to_json() + "\n" for e in geometry))
    (dataset / "20260101T000001000000-a1b2c3d4-orders.jsonl").write_text("".join(e.to_json() + "\n" for e in orders))
    return geometry + orders


def test_inbox_data_is_split_stably_into_train_and_held_out_slices(tmp_path: Path) -> None:
    examples = _write_inbox(tmp_path)
    split = split_inbox(tmp_path, heldout_fraction=0.2)
    assert split == split_inbox(tmp_path, heldout_fraction=0.2)
    held = {e.digest for _, _, e in split.heldout}
    assert held == {e.digest for e in examples if is_held_out(e, 0.2)}
    assert 0.12 < len(held) / len(examples) < 0.28  # about the fraction
    assert not held & {e.digest for e in split.train} and len(held) + len(split.train) == len(examples)
    # The slice: the line's field, or the source file's name (ingest stamp and queue prefix removed).
    assert {s for _, s, _ in split.heldout} == {"geometry", "orders"}
    assert all(key.startswith(f"{s}/inbox-") for key, s, _ in split.heldout)

    items = _heldout(_payload(tmp_path))
    keys = [e.example_id for e in items]
    assert len(keys) == 12 + len(held) and {k.split("/")[0] for k in keys} >= {"geometry", "orders", "steps1"}
    assert all(e.answer is not None for e in items)  # integer inbox answers are checked exactly, like generated ones
    assert all(e.example_id.split("/", 1)[0] == e.slice for e in items)
    trained = {(e.prompt, e.response) for e in _training_examples(_payload(tmp_path), "1", 10)}
    assert not {(e.prompt, e.answer) for _, _, e in split.heldout} & trained  # held out is never trained on
    windowed = [e.example_id for e in _heldout(_payload(tmp_path, eval_window=5, eval_inbox_max=10))]
    assert sum("/inbox-" in k for k in windowed) == 10  # beyond the cap, a rotating subset of the inbox's share


def _scores(per_slice: dict[str, tuple[int, float]]) -> dict[str, float]:
    return {f"{name}/{i:03d}": value for name, (count, value) in per_slice.items() for i in range(count)}


def test_the_gate_judges_an_inbox_slice_that_is_large_enough(tmp_path: Path) -> None:
    config = load_config(None, state_dir=str(tmp_path))  # the defaults
    metrics = SimpleNamespace(decision=lambda *a: None)
    rt = SimpleNamespace(policy=lambda: config.policy, config=config, metrics=metrics)
    gate = make_gate(rt)  # type: ignore[arg-type]
    champion = EvalOutcome("c1", _scores({"steps1": (15, -1.0), "steps2": (20, -1.0), "orders": (12, -1.0)}))
    # Better on maths, worse on the operator's slice: rejected, and the evidence names the slice.
    worse = EvalOutcome("c2", _scores({"steps1": (15, -0.5), "steps2": (20, -0.5), "orders": (12, -1.3)}))
    decision = gate(worse, champion, config_now := FakeClock().now())
    assert decision.action is policies.Action.REJECT
    assert any("orders" in r.message for r in decision.reasons), [r.message for r in decision.reasons]
    # The same regression in a slice below min_slice_examples is reported, not judged.
    small = EvalOutcome("c3", _scores({"steps1": (15, -0.5), "steps2": (20, -0.5), "orders": (5, -1.3)}))
    champion_small = EvalOutcome("c1", _scores({"steps1": (15, -1.0), "steps2": (20, -1.0), "orders": (5, -1.0)}))
    assert gate(small, champion_small, config_now).action is policies.Action.PROMOTE


class _RecordingRunner:
    def __init__(self) -> None:
        self.payloads: list[dict] = []

    def run(self, entry: str, payload: dict, work: Path, **_: object) -> ChildOutcome:
        self.payloads.append(payload)
        return ChildOutcome("done", {"scores": {"a/1": -float(len(self.payloads))}, "metrics": {}})


def test_the_evaluation_cache_keys_on_the_window_and_the_inbox_data(tmp_path: Path) -> None:
    config = load_config(None, state_dir=str(tmp_path / "state"))
    runner = _RecordingRunner()
    trainer = ChildTrainer(config, runner)  # type: ignore[arg-type]
    artifact = tmp_path / "artifact"
    first = trainer.evaluate(artifact, version_id="c1", window=10)
    assert trainer.evaluate(artifact, version_id="c1", window=10) == first and len(runner.payloads) == 1
    assert trainer.evaluate(artifact, version_id="c1", window=11) != first and len(runner.payloads) == 2
    trainer.evaluate(artifact, version_id="c1")  # the gate's fixed set: its own entry
    assert [p["eval_window"] for p in runner.payloads] == [10, 11, None]
    _write_inbox(config.dataset_dir)  # new operator data changes the held-out pool
    trainer.evaluate(artifact, version_id="c1", window=10)
    assert len(runner.payloads) == 4


def test_the_scheduled_champion_evaluation_series_varies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QTHA_CONFIG", raising=False)
    clock = FakeClock()
    rt = build_runtime(
        fast_config(tmp_path / "state"), cycles=PolicyCycleDriver(lambda rt: StandinTrainer()), clock=clock
    )
    try:
        assert rt.leadership.tick()
        cycle = rt.cycles.runner(rt).run(trigger_reasons=["test"], recipe=standin_recipe(steps=3))  # type: ignore[attr-defined]
        champion = rt.store.champion.get().version_id
        assert cycle.state.value == "promoted" and champion is not None
        for _ in range(4):
            assert rt.leadership.tick()
            jobs.evaluate_champion(rt)
            clock.advance(rt.config.scheduler.evaluate_interval_s)
        samples = rt.store.metrics.samples("eval_mean", labels={"version": champion})
        assert len(samples) == 4 and len({s.labels["window"] for s in samples}) == 4
        assert len({round(s.value, 9) for s in samples}) == 4  # not one cached number repeated
    finally:
        rt.store.close()


def test_the_gate_rejects_a_looping_or_empty_candidate_with_the_evidence(tmp_path: Path) -> None:
    config = load_config(None, state_dir=str(tmp_path))
    rt = SimpleNamespace(policy=lambda: config.policy, config=config, metrics=SimpleNamespace(decision=lambda *a: None))
    gate = make_gate(rt)  # type: ignore[arg-type]
    scores = _scores({"steps1": (15, -1.0)})
    clean = tuple(policies.ProbeResult(f"probe-{i}", "The answer is 4.", None) for i in range(8))
    broken = tuple(
        policies.ProbeResult(f"probe-{i}", text, policies.probe_failure(text, finished=True, parses=False))
        for i, text in enumerate(["", "4 4 4 4 4 4 4 4 4 4 4 4 4", "", "so so so so so so so so so so so so"] * 2)
    )
    champion = EvalOutcome("c1", scores, probes=clean)
    better = EvalOutcome("c2", {k: v + 0.5 for k, v in scores.items()}, probes=broken)
    decision = gate(better, champion, FakeClock().now())
    assert decision.action is policies.Action.REJECT  # better scores do not save a candidate that cannot answer
    [smoke] = [r for r in decision.reasons if r.code == "smoke_test"]
    assert "8 of 8 probes failed (empty, repetition; allowed 2)" in smoke.message
    assert {f["failure"] for f in decision.evidence["smoke"]["failures"]} == {"empty", "repetition"}
    assert gate(EvalOutcome("c3", better.scores, probes=clean), champion, FakeClock().now()).action is policies.Action.PROMOTE


def test_the_child_probe_pass_judges_what_generation_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    import model
    from agent.child import tasks

    class Tok:
        stop_ids = {0}
        pad_id = 0

        def apply_chat_template(self, messages: list[dict]) -> str:
            return messages[0]["content"]

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[1] for _ in texts]

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(i) for i in ids)

    answers = ["The answer is 7.", "", "ab" * 32, "seven", "8 8 8 8 8 8 8 8", "42", "9", "1"]
    monkeypatch.setattr(model, "generate_ids", lambda m, p, **k: [[ord(c) for c in a] for a in answers])
    payload = {"task": "maths", "smoke_probes": 8, "smoke_max_new_tokens": 64, "data_seed": 0}
    got = [p["failure"] for p in tasks.smoke_probes(payload, None, Tok())]
    assert got == [None, "empty", "no end", "no integer", "repetition", None, None, None]
    assert [name for name, _ in tasks.probe_prompts(payload)] == [f"probe-{i}" for i in range(8)]
    assert tasks.probe_prompts(payload) == tasks.probe_prompts({**payload, "data_seed": 5})  # fixed set
