"""The trigger, table-driven: which conditions fire, which suppress, and what an operator's run-now overrides."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from policies import (
    Action,
    BreakerConfig,
    Budget,
    CycleRecord,
    DriftConfig,
    PolicyInputError,
    Spend,
    TriggerConfig,
    TriggerHistory,
    decide_trigger,
)
from tests.policies.helpers import T0, at, cycle, samples

CONFIG = TriggerConfig(
    min_new_examples=100,
    staleness=timedelta(days=7),
    cooldown=timedelta(hours=1),
    quiet_hours=(22, 6),
    drift=DriftConfig(delta=0.005, threshold=0.05, min_samples=5),
    breaker=BreakerConfig(failures_to_open=3, backoff=timedelta(hours=1)),
    budget=Budget(per_day=Spend(cpu_seconds=3600.0, shots=0, money=0.0)),
    min_cycle_spend=Spend(cpu_seconds=60.0),
)
FRESH = at(-24)  # the champion was trained a day before T0
STEADY = samples([0.8] * 6, start_h=-10)  # six healthy champion samples
FAILS = (cycle(1, 2, "failed"), cycle(3, 4, "failed"), cycle(5, 6, "failed"))

F, S, OV, N = "fired", "suppressed", "overridden", "note"

CASES = [
    # name, history, now (hours from T0), action, [(code, kind), ...] in decision order
    ("first champion", dict(), 12, "run", [("no_champion", F)]),
    ("nothing to do", dict(champion_since=FRESH, metrics=STEADY), 12, "wait", [("nothing_fired", N)]),
    (
        "no samples yet",
        dict(champion_since=FRESH),
        12,
        "wait",
        [("drift_insufficient_samples", N), ("nothing_fired", N)],
    ),
    (
        "enough new data",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=100),
        12,
        "run",
        [("new_data", F)],
    ),
    (
        "one example short",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=99),
        12,
        "wait",
        [("nothing_fired", N)],
    ),
    ("stale exactly", dict(champion_since=at(12 - 7 * 24), metrics=STEADY), 12, "run", [("stale", F)]),
    (
        "drift",
        dict(champion_since=FRESH, metrics=samples([0.8] * 5 + [0.6], start_h=-10)),
        12,
        "run",
        [("drift", F)],
    ),
    (
        "several fire",
        dict(metrics=STEADY, new_examples=500),
        12,
        "run",
        [("no_champion", F), ("new_data", F)],
    ),
    (
        "paused",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500, paused=True),
        12,
        "wait",
        [("new_data", F), ("paused", S)],
    ),
    (
        "paused beats run-now",
        dict(champion_since=FRESH, metrics=STEADY, paused=True, run_now=True),
        12,
        "wait",
        [("run_now", F), ("paused", S)],
    ),
    (
        "cooldown",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500, cycles=(cycle(10, 11.5),)),
        12,
        "wait",
        [("new_data", F), ("cooldown", S)],
    ),
    (
        "cooldown just over",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500, cycles=(cycle(10, 11),)),
        12,
        "run",
        [("new_data", F)],
    ),
    (
        "run-now overrides cooldown",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=(cycle(10, 11.5),)),
        12,
        "run",
        [("run_now", F), ("cooldown", OV)],
    ),
    (
        "quiet hours",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500),
        23,
        "wait",
        [("new_data", F), ("quiet_hours", S)],
    ),
    (
        "quiet hours wrap midnight",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500),
        29.99,
        "wait",
        [("new_data", F), ("quiet_hours", S)],
    ),
    (
        "quiet hours end",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500),
        30,
        "run",
        [("new_data", F)],
    ),
    (
        "run-now overrides quiet hours and cooldown",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=(cycle(22, 22.5),)),
        23,
        "run",
        [("run_now", F), ("cooldown", OV), ("quiet_hours", OV)],
    ),
    (
        "one cycle at a time",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=(cycle(11, None),)),
        12,
        "wait",
        [("run_now", F), ("cycle_running", S)],
    ),
    (
        "breaker open",
        dict(champion_since=FRESH, metrics=STEADY, new_examples=500, cycles=FAILS),
        6.5,
        "wait",
        [("new_data", F), ("retry_failed", F), ("breaker_open", S), ("cooldown", S)],
    ),
    (
        "breaker open beats run-now",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=FAILS),
        6.5,
        "wait",
        [("run_now", F), ("retry_failed", F), ("breaker_open", S), ("cooldown", OV)],
    ),
    (
        # The back-off (1 h after the failure at 06:00) is over: the failed work is retried as the probe.
        "half-open probe",
        dict(champion_since=FRESH, metrics=STEADY, cycles=FAILS),
        7,
        "run",
        [("retry_failed", F), ("breaker_half_open", N)],
    ),
    (
        "one failure is retried after the cooldown",
        dict(champion_since=FRESH, metrics=STEADY, cycles=(cycle(9, 10, "failed"),)),
        11,
        "run",
        [("retry_failed", F)],
    ),
    (
        "a retry waits for the cooldown",
        dict(champion_since=FRESH, metrics=STEADY, cycles=(cycle(9, 10.5, "failed"),)),
        11,
        "wait",
        [("retry_failed", F), ("cooldown", S)],
    ),
    (
        "a success after a failure needs no retry",
        dict(champion_since=FRESH, metrics=STEADY, cycles=(cycle(7, 8, "failed"), cycle(9, 10, "rejected"))),
        11,
        "wait",
        [("nothing_fired", N)],
    ),
    # 3600 - 3550 = 50 CPU-s left today < the 60 a cycle needs.
    (
        "cpu budget spent",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=(cycle(1, 2, cpu=3550.0),)),
        12,
        "wait",
        [("run_now", F), ("budget_exhausted_cpu_seconds", S)],
    ),
    (
        "yesterday's spend is not today's",
        dict(champion_since=FRESH, metrics=STEADY, run_now=True, cycles=(cycle(-3, -2, cpu=3550.0),)),
        12,
        "run",
        [("run_now", F)],
    ),
]


@pytest.mark.parametrize(("name", "history", "now_h", "action", "reasons"), CASES, ids=[c[0] for c in CASES])
def test_trigger_scenarios(name: str, history: dict, now_h: float, action: str, reasons: list) -> None:
    decision = decide_trigger(TriggerHistory(**history), at(now_h), CONFIG)
    assert decision.action == action
    assert [(r.code, str(r.kind)) for r in decision.reasons] == reasons


def test_evidence_carries_the_numbers() -> None:
    history = TriggerHistory(
        champion_since=FRESH, metrics=STEADY, new_examples=42, cycles=(cycle(1, 11.75, cpu=600.0),)
    )
    evidence = decide_trigger(history, at(12), CONFIG).evidence
    assert evidence["new_examples"] == 42
    assert evidence["champion_age_s"] == 36 * 3600
    assert evidence["cooldown_left_s"] == 45 * 60
    assert evidence["spent_today"] == {"cpu_seconds": 600.0, "shots": 0, "money": 0.0}
    assert evidence["budget_left"] == {"cpu_seconds": 3000.0, "shots": 0, "money": 0.0}
    assert evidence["breaker"] == {"state": "closed", "consecutive_failures": 0, "open_until": None}
    assert evidence["drift"]["samples"] == 6 and evidence["drift"]["drifted"] is False


def test_shot_budget_spent_only_notes_when_a_cycle_needs_no_shots() -> None:
    config = TriggerConfig(budget=Budget(per_day=Spend(cpu_seconds=3600.0, shots=1000, money=0.0)))
    spent = CycleRecord(at(1), at(2), "rejected", Spend(cpu_seconds=10.0, shots=1000))
    decision = decide_trigger(TriggerHistory(run_now=True, cycles=(spent,)), at(12), config)
    assert decision.action == Action.RUN
    assert ("budget_exhausted_shots", "note") in [(r.code, str(r.kind)) for r in decision.reasons]
    needs_shots = TriggerConfig(budget=config.budget, min_cycle_spend=Spend(cpu_seconds=60.0, shots=1))
    blocked = decide_trigger(TriggerHistory(run_now=True, cycles=(spent,)), at(12), needs_shots)
    assert blocked.action == Action.WAIT
    assert ("budget_exhausted_shots", "suppressed") in [(r.code, str(r.kind)) for r in blocked.reasons]


def test_decision_is_json_and_names_the_instant() -> None:
    decision = decide_trigger(TriggerHistory(new_examples=5, run_now=True), at(12), CONFIG)
    text = json.dumps(decision.to_dict(), sort_keys=True)
    back = json.loads(text)
    assert back["policy"] == "trigger" and back["action"] == "run" and back["at"] == at(12).isoformat()
    assert [r["code"] for r in back["reasons"]] == ["no_champion", "run_now"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: decide_trigger(TriggerHistory(), T0.replace(tzinfo=None), CONFIG),
        lambda: TriggerHistory(new_examples=-1),
        lambda: TriggerConfig(quiet_hours=(5, 5)),
        lambda: TriggerConfig(quiet_hours=(5, 24)),
        lambda: TriggerConfig(min_new_examples=0),
    ],
)
def test_bad_inputs_are_refused(make) -> None:
    with pytest.raises(PolicyInputError):
        make()
