"""Self-improvement prompt pools from real sources, and how a stopped round ends.

The serving usage log (with feedback's correct answers) and inbox rows carrying only a prompt or only a final answer
reach the pool; a known answer from feedback or the inbox is what the verifier checks; a prompt of the held-out
pool never reaches training, whichever source offers it. A round stopped by collapse detection ends its cycle
REJECTED with the reason (not FAILED), and the recipe learner is told it gained nothing at its sampling cost.
The sampler is scripted (the tiny model never writes a marked answer).
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import model
import policies
from agent.child.datasplit import is_held_out, split_inbox
from agent.child.entry import TaskContext
from agent.child.tasks import _training_examples, heldout_prompts, self_improve_examples
from agent.cycle.plan import CyclePlan, PlanSource
from agent.cycle.trainer import DataRefusedError
from agent.daemon import status
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.inbox import Example, Inbox, read_examples
from agent.daemon.lifecycle import build_runtime
from agent.daemon.policy_inputs import cycle_outcome, cycle_spend, data_refused
from agent.daemon.usage_pool import USAGE_POOL, UsagePoolTrainer, export_usage_pool, usage_prompts
from agent.store import CycleState, Store, UsageRecord
from tests.agent.test_daemon import fast_config
from tests.fixtures.tiny_model import write_tiny_hf
from tests.support.standin_trainer import StandinTrainer, standin_recipe

RECIPE = dataclasses.replace(policies.PAPER_RECIPE, method="self-improve", samples_k=4, pool_prompts=10,
                             max_paths=2, agreement=0.6)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _usage(store: Store, request_id: str, *messages: tuple[str, str], status_code: int = 200) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, at=store.clock.now(), version_id="v1", status=status_code, error=None,
        messages=tuple({"role": role, "content": text} for role, text in messages), answers=("…",),
        finish_reasons=("stop",), sampling={"temperature": 0.0}, latency_s=0.1, ttft_s=0.01, prompt_tokens=9,
        completion_tokens=3,
    )


def _payload(tmp: Path, *, heldout_fraction: float = 0.2) -> dict[str, Any]:
    return {"task": "maths", "data_seed": 0, "dataset_dir": str(tmp / "dataset"), "heldout_fraction": heldout_fraction,
            "self_improve_dir": str(tmp / "state" / "self-improve"), "eval_max_new_tokens": 8, "eval_examples": 4,
            "eval_pool_examples": 40, "eval_inbox_max": 2, "smoke_probes": 2}


def test_the_inbox_takes_prompt_only_and_final_answer_rows_and_quarantines_a_null_answer(tmp_path: Path) -> None:
    box = Inbox(tmp_path / "in", tmp_path / "dataset", tmp_path / "q", max_bytes=10_000, max_chars=200, settle_s=0)
    box.ensure_dirs()
    rows = [{"prompt": "Ed has 4 bags of 5 nuts. How many nuts?"},
            {"prompt": "Fay has 6 rows of 2 cups. How many cups?", "answer": "12"},
            {"prompt": "Gus has 3 cats and 2 dogs. How many pets?", "answer": "3 + 2 = 5. The answer is 5."},
            {"prompt": " Ed has 4 bags of 5 nuts. How many nuts? "}]  # the same prompt-only row again
    (box.inbox_dir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (box.inbox_dir / "null.jsonl").write_text('{"prompt": "Hal?", "answer": null}\n')
    results = {r.source: r for r in box.ingest_all(now=NOW)}
    assert (results["prompts.jsonl"].accepted, results["prompts.jsonl"].duplicates) == (3, 1)
    assert results["null.jsonl"].quarantined
    assert "'answer' must be a non-empty string" in (results["null.jsonl"].reason or "")
    assert "prompt-only" in (results["null.jsonl"].reason or "")
    examples = list(read_examples(box.dataset_dir))
    assert [e.kind for e in examples] == ["prompt", "final-answer", "solved"]
    stored = (box.dataset_dir / (results["prompts.jsonl"].dataset_file or "")).read_text().splitlines()
    assert examples[0].answer is None and "answer" not in json.loads(stored[0])
    # A prompt-only row has nothing to be scored against: never held out, even when everything else is.
    split = split_inbox(box.dataset_dir, heldout_fraction=1.0)
    assert [e.prompt for e in split.prompts] == [rows[0]["prompt"]] and len(split.heldout) == 2
    # In the maths task only the worked solution is a supervised row; the other two are pool prompts.
    trained = {e.prompt for e in _training_examples({**_payload(tmp_path), "heldout_fraction": 0.0}, "1", 4)}
    assert rows[2]["prompt"] in trained and not {rows[0]["prompt"], rows[1]["prompt"]} & trained


def test_the_usage_log_exports_single_prompts_with_feedbacks_correct_answer(sqlite_store: Store, tmp_path: Path) -> None:
    store = sqlite_store
    store.usage.record_many([
        _usage(store, "r1", ("user", "What is 6 times 7?")),
        _usage(store, "r2", ("user", "Hi"), ("assistant", "Hello"), ("user", "And 2 plus 2?")),  # multi-turn
        _usage(store, "r3", ("user", "What is 9 minus 4?"), status_code=500),  # not answered
        _usage(store, "r4", ("system", "Be terse."), ("user", "What is 8 plus 1?")),  # a system prompt changes it
        _usage(store, "r5"),  # serve.usage_content = false: no text logged
        _usage(store, "r6", ("user", "What is  6 times 7?")),  # the same prompt again, with feedback
        _usage(store, "r7", ("user", "What is 5 plus 5?")),
    ])
    store.usage.add_feedback("r6", correct_answer=" 42 ")
    store.usage.add_feedback("r7", score=1.0)
    rows = usage_prompts(store)
    assert rows == [
        {"prompt_id": "usage/r7", "prompt": "What is 5 plus 5?", "correct_answer": None},
        {"prompt_id": "usage/r6", "prompt": "What is  6 times 7?", "correct_answer": "42"},
    ]

    class Inner:
        def __init__(self) -> None:
            self.trained: list[str] = []

        def train(self, recipe: policies.Recipe, workdir: Path, **_: Any) -> str:
            self.trained.append(recipe.method)
            return "outcome"

        def evaluate(self, artifact_dir: Path, *, version_id: str) -> str:  # no window, like the Ray trainer
            return version_id

    inner = Inner()
    trainer = UsagePoolTrainer(inner, store)  # type: ignore[arg-type]
    work = tmp_path / "cycles" / "1"
    kw: dict[str, Any] = {"resume_from": None, "parent_dir": None, "progress": lambda *_: None}
    assert trainer.train(RECIPE, work, **kw) == "outcome"
    written = (work / USAGE_POOL).read_text()
    assert [json.loads(line) for line in written.splitlines()] == rows
    assert (work / USAGE_POOL).stat().st_mode & 0o077 == 0
    store.usage.record_many([_usage(store, "r8", ("user", "What is 1 plus 1?"))])
    trainer.train(RECIPE, work, **kw)  # a resumed cycle keeps the pool it started with
    assert (work / USAGE_POOL).read_text() == written and export_usage_pool(store, work / USAGE_POOL) == 2
    sft = tmp_path / "cycles" / "2"
    trainer.train(policies.PAPER_RECIPE, sft, **kw)
    assert not (sft / USAGE_POOL).exists() and inner.trained == ["self-improve", "self-improve", "supervised"]
    assert trainer.evaluate(tmp_path, version_id="c1") == "c1" and trainer.trained == inner.trained


def _first(fraction: float, held: bool, make: Any) -> Example:
    return next(e for i in range(1000) if is_held_out(e := make(i), fraction) is held)


def test_usage_and_inbox_prompts_reach_the_pool_with_known_answers_and_held_out_prompts_never_do(
    sqlite_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, payload = sqlite_store, _payload(tmp_path)
    # The held-out pool: generated test problems beyond the gate's fixed set, and the inbox's held-out share.
    far = model.generate_math_problems(40, split="test", seed=0)[30].question
    held_row = _first(0.2, True, lambda i: Example(f"Ivy packs {i + 3} crates of 11 jars. How many jars?", "99"))
    final_row = _first(0.2, False, lambda i: Example(f"Di has {i + 7} rows of 3 chairs. How many chairs?",
                                                     str(3 * (i + 7))))
    dataset = Path(payload["dataset_dir"])
    dataset.mkdir(parents=True)
    inbox_rows = [final_row, held_row, Example("Cy buys 4 bags of 6 apples. How many apples?", None),
                  Example(held_row.prompt, None), Example(far, None)]
    (dataset / "20260101T000000000000-prompts.jsonl").write_text("".join(e.to_json() + "\n" for e in inbox_rows))
    ann, bo = "Ann has 5 boxes of 8 pens. How many pens?", "Bo reads 9 pages a day for 3 days. How many pages?"
    store.usage.record_many([_usage(store, "u1", ("user", ann)), _usage(store, "u2", ("user", bo)),
                             _usage(store, "u3", ("user", far)),
                             _usage(store, "u4", ("user", f"Please help me with this one. {far}")),
                             _usage(store, "u5", ("user", held_row.prompt))])
    store.usage.add_feedback("u1", correct_answer="The answer is 40.")
    work = tmp_path / "cycles" / "1"
    work.mkdir(parents=True)
    export_usage_pool(store, work / USAGE_POOL)

    seen: dict[str, int | None] = {}

    def sample_pool(engine: Any, pool: Any, *, k: int, **_: Any) -> list[model.PromptSamples]:
        out = []
        for p in pool:
            seen[p.prompt] = p.answer
            right = 13 if p.answer is None else p.answer  # with no known answer the majority (13) is the label
            texts = [f"Step 1: {right} + 0 = {right}. The answer is {right}."] + [
                f"So {right} * 1 = {right + 1}. The answer is {right + 1}."] * (k - 1)
            if p.answer is None:  # the majority agrees on 13, one sample dissents
                texts = [f"Step 1: 13 + {i} = {13 + i}. The answer is 13." for i in range(k - 1)] + ["The answer is 2."]
            out.append(model.PromptSamples(p, tuple(texts), (True,) * k, 10))
        return out

    monkeypatch.setattr(model, "sample_pool", sample_pool)
    loaded = model.load_checkpoint(write_tiny_hf(tmp_path / "tiny"))
    events = io.StringIO()
    heldout = heldout_prompts(payload)
    assert far in heldout and held_row.prompt in heldout  # the whole held-out pool, not only the fixed set
    examples, metrics = self_improve_examples(payload, RECIPE, loaded, None, heldout, work, TaskContext(events))

    # Every real source reached the pool, with its known answer where it had one.
    assert seen[ann] == 40 and seen[bo] is None  # feedback's correct answer ("The answer is 40.") is known
    assert seen[final_row.prompt] == int(final_row.answer or "") and seen["Cy buys 4 bags of 6 apples. How many apples?"] is None
    assert metrics["si_pool_usage"] == 2 and metrics["si_pool_inbox"] == 2
    assert metrics["si_pool_generated"] == RECIPE.pool_prompts - 4 and metrics["si_prompts"] == RECIPE.pool_prompts
    # The verifier checked the known answer: the one right sample is kept, the wrong majority is not.
    by_prompt: dict[str, list[str]] = {}
    for e in examples:
        by_prompt.setdefault(e.prompt, []).append(e.response)
    assert by_prompt[ann] == ["Step 1: 40 + 0 = 40. The answer is 40."]
    assert by_prompt[final_row.prompt] == [f"Step 1: {final_row.answer} + 0 = {final_row.answer}. "
                                           f"The answer is {final_row.answer}."]
    assert all(r.endswith("The answer is 13.") for r in by_prompt[bo]) and len(by_prompt[bo]) == 2  # majority 3/4
    # A held-out prompt never reaches sampling or training, exact, embedded or from the inbox's held-out share.
    assert not {far, held_row.prompt, f"Please help me with this one. {far}"} & (set(seen) | set(by_prompt))
    assert not set(seen) & set(heldout) and metrics["si_pool_heldout_removed"] >= 3
    # The round's record says where the pool came from.
    event = json.loads(events.getvalue().splitlines()[-1])
    assert event["event"] == "self_improve" and event["si_pool_usage"] == 2 and event["stopped"] is None


def test_an_empty_pool_is_a_recorded_stop_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = {**_payload(tmp_path), "task": "dialogue"}  # no generator prompts, and no real ones
    monkeypatch.setattr(model, "sample_pool", lambda *a, **k: pytest.fail("nothing to sample"))
    events = io.StringIO()
    work = tmp_path / "cycles" / "1"
    work.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="self-improve stopped: the prompt pool is empty"):
        self_improve_examples(payload, RECIPE, None, None, [], work, TaskContext(events))
    event = json.loads(events.getvalue().splitlines()[-1])
    assert event["si_drawn"] == 0 and event["stopped"].startswith("self-improve stopped")


STOPPED = "self-improve stopped: collapse: distinct-3 of kept solutions 0.100 < 0.5 x round one's 0.800 " \
          "(drawn 64, verified 30, used 4)"
ROUND = {"si_prompts": 8.0, "si_drawn": 64.0, "si_verified": 30.0, "si_used": 4.0, "si_pass_at_k": 0.5,
         "si_distinct3": 0.1, "si_mean_words": 5.0, "si_verification_rate": 0.47, "si_sampling_cpu_s": 720.0,
         "si_pool_usage": 3.0, "si_pool_inbox": 1.0, "si_pool_generated": 4.0}


class _Collapsing(StandinTrainer):
    def train(self, *args: Any, **kwargs: Any) -> Any:
        raise DataRefusedError(STOPPED, ROUND)


def test_a_collapse_stop_rejects_the_cycle_with_its_reason_and_tells_the_learner_a_bad_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    monkeypatch.delenv("QTHA_CONFIG", raising=False)
    rt = build_runtime(fast_config(tmp_path / "state"), cycles=PolicyCycleDriver(lambda rt: _Collapsing()))
    try:
        assert rt.leadership.tick()
        plan = CyclePlan(source=PlanSource.OPERATOR, planned_cpu_s=5000.0)
        cycle = rt.cycles.runner(rt).run(trigger_reasons=["test"], recipe=standin_recipe(), plan=plan)  # type: ignore[attr-defined]
        # An explicit verdict with the reason, not a FAILED traceback; the breaker does not count it.
        assert cycle.state is CycleState.REJECTED and cycle.error is None and cycle.candidate_id is None
        assert cycle.outcome == f"rejected: {STOPPED}"
        assert cycle_outcome(cycle) is policies.CycleOutcome.REJECTED
        [shown] = status.history(rt.store)["cycles"]
        assert shown["state"] == "rejected" and "self-improve stopped: collapse: distinct-3" in shown["outcome"]
        [decision] = rt.store.decisions.list(kind="self-improve", cycle_id=cycle.id)
        assert decision.action == "stop" and decision.evidence["drawn"] == 64.0
        messages = {r["code"]: r["message"] for r in decision.reasons}  # type: ignore[index]
        assert messages["collapse"] == STOPPED
        assert messages["verified_samples"].startswith("64 samples drawn, 30 verified, 4 used (+0 replayed) from 8 "
                                                       "prompts (3 usage log, 1 inbox, 4 generated)")
        # Charged what it spent (the sampling), not what was planned for training.
        assert data_refused(rt.store, cycle) and cycle_spend(rt.store, cycle).cpu_seconds == 720.0
        # The learner hears a recipe that gained nothing at its cost, not a crash it would ignore.
        rt.cycles.planner.tell(rt, cycle)  # type: ignore[attr-defined]
        from agent.daemon.policy_inputs import recipe_config

        study = optuna.load_study(study_name=policies.study_name_for(recipe_config(rt.config)),
                                  storage=rt.cycles.planner.storage(rt))  # type: ignore[attr-defined]
        [trial] = study.get_trials(deepcopy=False)
        assert trial.state is optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(-0.01 * 720.0 / 3600.0)
    finally:
        rt.store.close()
