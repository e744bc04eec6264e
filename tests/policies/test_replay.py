"""The golden replay: a recorded two-day history and the exact decisions (and reasons) it must produce."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from policies import Action, PolicyInputError, replay_history

DATA = Path(__file__).parent / "data"
HISTORY = DATA / "history.json"
GOLDEN = DATA / "history.golden.json"


def load() -> dict:
    return json.loads(HISTORY.read_text(encoding="utf-8"))


def test_replay_matches_the_golden_file_exactly() -> None:
    steps = replay_history(load())
    assert [s.to_dict() for s in steps] == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_the_golden_story() -> None:
    """The narrative the history was written to tell, so that the golden file is checked by a human-readable
    expectation too (regenerating it cannot silently change the story)."""
    story = [(s.index, s.decision.policy, str(s.decision.action)) for s in replay_history(load())]
    assert story == [
        (0, "trigger", "run"),  # no champion yet
        (2, "promotion", "promote"),  # first candidate: floor + smoke test only
        (5, "trigger", "wait"),  # cooldown after the first cycle, nothing fired
        (7, "trigger", "run"),  # 150 new examples
        (12, "trigger", "run"),  # 120 new examples (the cycle at 10:06 failed)
        (
            16,
            "trigger",
            "wait",
        ),  # second failure opened the breaker; run-now overrides cooldown, not the breaker
        (17, "trigger", "run"),  # half-open probe
        (19, "promotion", "promote"),  # v2 beats v1 on 12 paired examples, both slices hold
        (21, "rollback", "keep"),  # one live sample is not enough
        (22, "rollback", "keep"),  # live mean 0.61 >= 0.5833 - 0.05
        (23, "rollback", "keep"),  # live mean 0.54 >= 0.5333
        (25, "rollback", "rollback"),  # live mean 0.5175 < 0.5333: back to v1
        (27, "trigger", "wait"),  # paused, though 500 new examples
        (29, "trigger", "wait"),  # quiet hours
        (31, "trigger", "run"),  # run-now overrides quiet hours
        (33, "promotion", "hold"),  # slice 'rare' has 3 examples < 4: a human decides
        (36, "trigger", "wait"),  # 50 CPU-s left today < 60
        (37, "trigger", "run"),  # a new day, a new budget; run-now still pending
        (43, "trigger", "wait"),  # nothing fired
        (45, "trigger", "run"),  # the champion v1 drifted: 0.62, 0.61, 0.62, 0.61, 0.62, 0.45
    ]


def test_replay_command_prints_the_golden_json() -> None:
    result = CliRunner().invoke(app, ["replay", str(HISTORY), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout == GOLDEN.read_text(encoding="utf-8")


def test_replay_command_prints_reasons_for_humans() -> None:
    result = CliRunner().invoke(app, ["replay", str(HISTORY)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "[0] 2026-03-02T08:00:00+00:00 trigger: run"
    assert lines[1] == "    fired      no_champion: there is no champion yet: train the first one"
    assert (
        "    suppressed breaker_open: 2 consecutive failed cycles opened the breaker until "
        "2026-03-02T13:10:00+00:00" in lines
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": "other"}', "expected 'qtha-history/1'"),
        ('{"format": "qtha-history/1", "events": [{"at": "2026-03-02T08:00:00", "type": "tick"}]}', "naive"),
    ],
)
def test_replay_command_refuses_bad_files(content: str, message: str) -> None:
    folder = tempfile.mkdtemp(prefix="qtha-replay-")  # pytest's tmp_path is unusable here (see facts.md)
    try:
        path = Path(folder) / "h.json"
        path.write_text(content, encoding="utf-8")
        result = CliRunner().invoke(app, ["replay", str(path)])
    finally:
        shutil.rmtree(folder)
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_file_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["replay", str(DATA / "missing.json")])
    assert result.exit_code == 2 and "cannot read history" in result.stderr


def mutate(change) -> dict:
    history = copy.deepcopy(load())
    change(history)
    return history


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda h: h["events"].insert(0, {"at": "2026-03-02T09:00:00+00:00", "type": "tick"}),
            "before the previous",
        ),
        (
            lambda h: h["events"].append({"at": "2026-03-04T00:00:00+00:00", "type": "nap"}),
            "'type' must be one of",
        ),
        (lambda h: h["config"]["trigger"].update(cooldwn=5), "cooldwn is not a setting"),
        (
            lambda h: h["events"].append(
                {"at": "2026-03-04T00:00:00+00:00", "type": "command", "command": "reboot"}
            ),
            "reboot",
        ),
        (
            lambda h: h["events"].append(
                {"at": "2026-03-04T00:00:00+00:00", "type": "cycle_finished", "outcome": "rejected"}
            ),
            "none is running",
        ),
        (lambda h: h["events"].append({"at": "2026-03-04T00:00:00+00:00", "type": "new_data"}), "events[46]"),
        (
            lambda h: h["events"].extend(
                [
                    {"at": "2026-03-04T00:00:00+00:00", "type": "cycle_started"},
                    {"at": "2026-03-04T01:00:00+00:00", "type": "cycle_finished", "outcome": "exploded"},
                ]
            ),
            "events[47] (cycle_finished) is malformed: CycleRecord.outcome = 'exploded'",
        ),
    ],
)
def test_malformed_histories_name_the_event(change, message: str) -> None:
    with pytest.raises(PolicyInputError, match=re.escape(message)):
        replay_history(mutate(change))


def test_config_in_the_history_changes_the_decisions() -> None:
    # Without quiet hours, the tick at 22:30 (index 29) runs the cycle.
    history = mutate(lambda h: h["config"]["trigger"].update(quiet_hours=None))
    steps = {s.index: s.decision for s in replay_history(history)}
    assert steps[29].action == Action.RUN
