"""Live signals from the usage log and feedback: the live_* series per version, drift from them, the canary
(promote / extend / abort, `promote --now`, share 0) and rollback after a promotion — daemon side, stand-in trainer."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import policies
from agent.clock import FakeClock
from agent.config import QthaConfig
from agent.daemon import jobs
from agent.daemon.commands import apply_one
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime
from agent.daemon.live import CANARY_KEY, live_stats
from agent.daemon.policy_inputs import trigger_config, trigger_history
from agent.daemon.runtime import Runtime
from agent.store import CycleState, Store, UsageRecord
from tests.agent.test_daemon import fast_config, wait_for
from tests.support.standin_trainer import StandinTrainer, standin_recipe

_ids = itertools.count()


def serve(store: Store, version: str, n: int, *, good: bool, at: datetime | None = None, feedback: bool = True) -> None:
    """``n`` answered maths requests of ``version``: correct ones (good) or looping wrong ones, with feedback."""
    records = []
    for _ in range(n):
        i = next(_ids)
        answer = f"The answer is {i % 50}." if good else "so so so so so so so so so so so so so"
        records.append(
            UsageRecord(
                request_id=f"r{i}", at=at or store.clock.now(), version_id=version, status=200, error=None,
                messages=({"role": "user", "content": f"q{i}"},), answers=(answer,), finish_reasons=("stop",),
                sampling={}, latency_s=0.05, ttft_s=0.01, prompt_tokens=5, completion_tokens=6,
            )
        )
    store.usage.record_many(records)
    if feedback:
        for record in records:
            i = int(record.request_id[1:])
            store.usage.add_feedback(record.request_id, score=1.0 if good else 0.0, correct_answer=str(i % 50))


def _config(tmp_path: Path, **live: object) -> QthaConfig:
    config = fast_config(tmp_path / "state")
    # These tests run a cycle in-process with no renewal job: the lease taken once must outlast the cycle, also on
    # a loaded machine (at 3 s a starved run lost it mid-canary and stopped the cycle).
    config = config.model_copy(update={"scheduler": config.scheduler.model_copy(update={"lease_ttl_s": 120.0})})
    live_cfg = config.live.model_copy(
        update={"canary_bake_s": 0.6, "canary_poll_s": 0.02, "min_samples": 10, "canary_max_extensions": 1, **live}
    )
    return config.model_copy(update={"live": live_cfg})


@pytest.fixture
def rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.delenv("QTHA_CONFIG", raising=False)
    runtime = build_runtime(_config(tmp_path), cycles=PolicyCycleDriver(lambda rt: StandinTrainer()))
    assert runtime.leadership.tick()
    yield runtime
    runtime.store.close()


def _cycle(rt: Runtime, steps: int) -> object:
    return rt.cycles.runner(rt).run(trigger_reasons=["test"], recipe=standin_recipe(steps=steps))  # type: ignore[attr-defined]


def test_live_stats_count_errors_degenerate_answers_verification_and_feedback(rt: Runtime) -> None:
    since = rt.clock.now() - timedelta(seconds=1)
    serve(rt.store, "base", 30, good=True)  # before the first promotion the base model serves
    serve(rt.store, "base", 10, good=False)
    serve(rt.store, "other", 10, good=False)
    stats = live_stats(rt.store, "base", since=since)
    assert (stats.requests, stats.answered, stats.errors, stats.degenerate) == (40, 40, 0, 10)
    assert (stats.checked, stats.verified, stats.feedback_n, stats.feedback_sum) == (40, 30, 40, 30.0)
    rates = stats.rates()
    assert rates["live_verified_rate"] == 0.75 and rates["live_degenerate_rate"] == 0.25
    assert rt.leadership.tick()
    jobs.observe_live_signals(rt)
    [sample] = rt.store.metrics.samples("live_verified_rate")
    assert (sample.value, dict(sample.labels)) == (0.75, {"version": "base"})


def test_drift_fires_from_live_signals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QTHA_CONFIG", raising=False)
    clock = FakeClock()
    config = _config(tmp_path, canary_share=0.0, window_s=59.0)
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()), clock=clock)
    try:
        assert rt.leadership.tick()
        assert _cycle(rt, 3).state is CycleState.PROMOTED  # type: ignore[attr-defined]
        champion = rt.store.champion.get().version_id
        assert champion is not None
        policy = rt.policy().model_copy(update={"drift_metric": "live_verified_rate", "drift_threshold": 0.3})
        fired_at = None
        for minute in range(14):  # steady traffic, then the prompts shift to ones the champion answers worse
            clock.advance(60)
            assert rt.leadership.tick()
            serve(rt.store, champion, 20, good=True)
            if minute >= 6:
                serve(rt.store, champion, 40, good=False)
            jobs.observe_live_signals(rt)  # one live_verified_rate sample per minute, from the usage log
            history = trigger_history(rt.store, policy, paused=False, run_now=False)
            decision = policies.decide_trigger(history, clock.now(), trigger_config(policy))
            if fired_at is None and "drift" in decision.codes(policies.ReasonKind.FIRED):
                fired_at = minute
        samples = rt.store.metrics.samples("live_verified_rate", labels={"version": champion})
        assert [round(s.value, 3) for s in samples] == [1.0] * 6 + [0.333] * 8
        assert fired_at is not None and 6 <= fired_at <= 9, fired_at  # within a few samples of the shift
    finally:
        rt.store.close()


def _canary_cycle(rt: Runtime, *, candidate_good: bool, share_traffic: bool = True) -> tuple[object, list]:
    """First cycle promotes a champion; the second cycle's candidate bakes as a canary while live traffic flows."""
    assert _cycle(rt, 3).state is CycleState.PROMOTED  # type: ignore[attr-defined]
    champion = rt.store.champion.get().version_id
    assert champion is not None
    serve(rt.store, champion, 5, good=True)  # the server answered recently: a canary can start
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            row = rt.store.overrides.get(CANARY_KEY)
            if row and share_traffic:
                serve(rt.store, row["version"], 12, good=candidate_good)
                serve(rt.store, champion, 24, good=True)
            stop.wait(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        cycle = _cycle(rt, 40)
    finally:
        stop.set()
        thread.join()
    return cycle, rt.store.decisions.list(kind="canary", cycle_id=cycle.id)  # type: ignore[attr-defined]


def test_a_good_canary_is_promoted_with_its_decisions_recorded(rt: Runtime) -> None:
    cycle, decisions = _canary_cycle(rt, candidate_good=True)
    assert cycle.state is CycleState.PROMOTED  # type: ignore[attr-defined]
    actions = [d.action for d in decisions]  # a slow machine may need an extension to gather the samples
    assert actions[0] == "wait" and actions[-1] == "promote" and set(actions[1:-1]) <= {"extend"}
    assert decisions[-1].reasons[-1]["code"] == "canary_ok"
    assert decisions[-1].evidence["a"]["requests"] >= 10  # the live counts behind it
    assert rt.store.overrides.get(CANARY_KEY) is None  # the server stops routing to it


def test_a_worse_canary_is_aborted_and_the_champion_keeps_serving(rt: Runtime) -> None:
    cycle, decisions = _canary_cycle(rt, candidate_good=False)
    assert cycle.state is CycleState.REJECTED and "canary aborted" in cycle.outcome  # type: ignore[attr-defined]
    assert decisions[-1].action == "abort"
    assert any(r["code"] == "live_worse" for r in decisions[-1].reasons)
    assert rt.store.champion.get().version_id == "c000001"
    assert rt.store.overrides.get(CANARY_KEY) is None


def test_too_little_traffic_extends_then_the_offline_gate_stands(rt: Runtime) -> None:
    cycle, decisions = _canary_cycle(rt, candidate_good=True, share_traffic=False)
    assert [d.action for d in decisions] == ["wait", "extend", "promote"]
    assert cycle.state is CycleState.PROMOTED  # type: ignore[attr-defined]
    assert decisions[-1].reasons[-1]["code"] == "no_live_verdict"


def test_share_zero_or_promote_now_skip_the_canary(rt: Runtime) -> None:
    rt.config = rt.config.model_copy(update={"live": rt.config.live.model_copy(update={"canary_share": 0.0})})
    assert _cycle(rt, 3).state is CycleState.PROMOTED  # type: ignore[attr-defined]
    serve(rt.store, "c000001", 5, good=True)
    assert _cycle(rt, 40).state is CycleState.PROMOTED  # type: ignore[attr-defined]
    assert [d.reasons[0]["code"] for d in rt.store.decisions.list(kind="canary")] == ["canary_disabled"] * 2
    # With a share again, `qtha promote --now` during the bake ends the canary with a promotion.
    rt.config = rt.config.model_copy(
        update={"live": rt.config.live.model_copy(update={"canary_share": 0.1, "canary_bake_s": 3600})}
    )
    serve(rt.store, "c000002", 5, good=True)

    def promote_now() -> None:
        wait_for(lambda: rt.store.overrides.get(CANARY_KEY), what="the canary")
        command = rt.store.commands.submit("promote", {"version": None, "now": True}, key="k", actor="test")
        assert "ends now" in (apply_one(rt, command).result or "")

    thread = threading.Thread(target=promote_now)
    thread.start()
    cycle = _cycle(rt, 60)
    thread.join()
    assert cycle.state is CycleState.PROMOTED  # type: ignore[attr-defined]
    assert rt.store.decisions.list(kind="canary")[-1].reasons[0]["code"] == "canary_skipped"


def test_a_promotion_that_degrades_live_is_rolled_back(rt: Runtime) -> None:
    rt.config = rt.config.model_copy(update={"live": rt.config.live.model_copy(update={"canary_share": 0.0})})
    assert _cycle(rt, 3).state is CycleState.PROMOTED  # type: ignore[attr-defined]
    serve(rt.store, "c000001", 60, good=True, at=rt.clock.now() - timedelta(seconds=30))
    assert _cycle(rt, 40).state is CycleState.PROMOTED  # type: ignore[attr-defined]
    serve(rt.store, "c000002", 30, good=True)
    assert rt.leadership.tick()  # jobs act only while leading (the cycles took a while)
    jobs.observe_live_signals(rt)
    assert rt.store.champion.get().version_id == "c000002"  # as good as before: kept
    serve(rt.store, "c000002", 60, good=False)
    assert rt.leadership.tick()
    jobs.observe_live_signals(rt)
    assert rt.store.champion.get().version_id == "c000001"
    [decision] = rt.store.decisions.list(kind="rollback")
    assert decision.action == "rollback" and any(r["code"] == "live_degraded" for r in decision.reasons)
