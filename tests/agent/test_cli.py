"""The admin CLI in-process (Typer's runner) against a fresh database: JSON output, exit codes, queued commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.app import app
from agent.store import open_store

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("QTHA_CONFIG", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QTHA_ACTOR", "alice")
    path = tmp_path / "qtha.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return path


def run(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.output


def test_status_json_on_a_fresh_database(config: Path) -> None:
    code, out = run(config, "status", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["champion"] == {"version": None, "epoch": 0, "pinned": False, "metrics": {}, "since": None}
    assert data["cycle"] is None and data["leader"]["holder"] is None and data["pending_commands"] == []


def test_overrides_queue_with_idempotency_keys(config: Path) -> None:
    assert run(config, "pause", "--key", "k1")[0] == 0
    assert run(config, "pause", "--key", "k1")[0] == 0  # the same key again: still one command
    code, out = run(config, "promote", "c000007", "--key", "k2")
    assert code == 0 and "queued promote" in out
    code, out = run(config, "promote", "c000008", "--key", "k2")  # same key, different command
    assert code == 2 and "already names command promote" in out
    pending = json.loads(run(config, "status", "--json")[1])["pending_commands"]
    assert [(c["kind"], c["args"], c["actor"]) for c in pending] == [
        ("pause", {}, "alice"),
        ("promote", {"version": "c000007"}, "alice"),
    ]


def test_wait_without_a_daemon_fails_with_1(config: Path) -> None:
    code, out = run(config, "resume", "--wait", "0.5")
    assert code == 1 and "not applied within 0.5 s" in out


def test_refused_command_exits_3(config: Path) -> None:
    run(config, "status")  # creates the database
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    command = store.commands.submit("promote", {"version": "nope"}, key="pre-applied", actor="alice")
    store.commands.mark_applied(command.id, ok=False, result="model version 'nope' does not exist")
    store.close()
    code, out = run(config, "promote", "nope", "--key", "pre-applied", "--wait", "5")
    assert code == 3 and "refused: model version 'nope' does not exist" in out


def test_cycle_now_while_a_cycle_runs_exits_4(config: Path) -> None:
    run(config, "status")
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    store.cycles.begin(owner="somebody#1", trigger_reasons=["stale"])
    store.close()
    code, out = run(config, "cycle", "--now")
    assert code == 4 and "cycle 1 is running" in out
    assert run(config, "cycle")[0] == 2  # without --now: usage


def test_policy_set_validates_before_queueing(config: Path) -> None:
    code, out = run(config, "policy", "set", "cooldown=5")
    assert code == 2 and "unknown policy key 'cooldown'" in out
    code, out = run(config, "policy", "set", "cooldown_s=-1")
    assert code == 2 and "cooldown_s" in out
    assert run(config, "policy", "set", "quiet_hours=[8, 18]")[0] == 0
    shown = json.loads(run(config, "policy", "show", "--json")[1])
    assert shown["cooldown_s"] == {"value": 3600.0, "source": "config"}  # queued, not yet applied


def test_ingest_validates_and_drops_into_the_inbox(config: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "response": "4"}\n')
    code, out = run(config, "ingest", str(good))
    assert code == 0 and "queued 2 examples" in out
    inbox = list((tmp_path / "state" / "inbox").iterdir())
    assert (
        len(inbox) == 1 and inbox[0].name.endswith("-good.jsonl") and inbox[0].read_text() == good.read_text()
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": null}\n')
    code, out = run(config, "ingest", str(bad))
    assert code == 1 and "line 1: 'answer' must be a non-empty string" in out and "prompt-only" in out
    prompts = tmp_path / "prompts.jsonl"  # prompts alone (self-improvement works them out)
    prompts.write_text('{"prompt": "x"}\n{"prompt": "What is 3 times 4?", "answer": "12"}\n')
    code, out = run(config, "ingest", str(prompts))
    assert code == 0 and "queued 2 examples" in out
    assert run(config, "ingest", str(tmp_path / "missing.jsonl"))[0] == 2


def test_observe_records_a_labelled_sample(config: Path) -> None:
    code, out = run(config, "observe", "live_feedback_score", "0.75", "--label", "version=v3")
    assert code == 0 and "recorded live_feedback_score=0.75" in out
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    [sample] = store.metrics.samples("live_feedback_score")
    store.close()
    assert (sample.value, dict(sample.labels), sample.source) == (0.75, {"version": "v3"}, "operator")


def test_observe_refuses_a_sample_that_fits_no_series(config: Path) -> None:
    code, out = run(config, "observe", "live_accuracy", "0.75", "--label", "version=v3")
    assert code == 2 and "unknown metric series 'live_accuracy'" in out and "live_feedback_score" in out
    code, out = run(config, "observe", "live_feedback_score", "0.75", "--label", "region=eu")
    assert code == 2 and "needs label(s) version" in out
    code, out = run(config, "observe", "live_feedback_score", "0.75", "--label", "version=v3", "--label", "region=eu")
    assert code == 2 and "does not take label(s) region" in out
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    assert store.metrics.samples("live_feedback_score") == [] and store.metrics.samples("live_accuracy") == []
    store.close()


def test_read_commands_have_json(config: Path) -> None:
    for command in ("versions", "history", "decisions", "policy show", "config show"):
        code, out = run(config, *command.split(), "--json")
        assert code == 0, (command, out)
        json.loads(out)


def test_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[metrics]\nport = 0\n")
    code, out = run(path, "status")
    assert code == 2 and "metrics.port" in out


@pytest.mark.parametrize(
    ("pair", "field"),
    [("qubits=5", "qubits"), ("steps=2.5", "steps"), ("learn=true", "learn"), ("learning_rate=fast", "learning_rate")],
)
def test_cycle_recipe_overrides_are_validated_before_queueing(config: Path, pair: str, field: str) -> None:
    code, out = run(config, "cycle", "--now", "--recipe", pair)
    assert code == 2 and field in out and len(out.strip().splitlines()) == 1
    assert json.loads(run(config, "status", "--json")[1])["pending_commands"] == []
    code, out = run(config, "cycle", "--now", "--recipe", "steps=7", "--recipe", "adapter=lora")
    assert code == 0 and "queued cycle" in out


def test_promote_needs_a_version_or_now(config: Path) -> None:
    code, out = run(config, "promote")
    assert code == 2 and "--now" in out
    code, out = run(config, "promote", "--now")
    assert code == 0
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    [command] = [c for c in store.commands.pending() if c.kind == "promote"]
    store.close()
    assert dict(command.args) == {"version": None, "now": True}


def test_files_are_private_outside_systemd_too(tmp_path: Path) -> None:
    import os
    import stat
    import subprocess
    import sys

    state = tmp_path / "state"
    config = tmp_path / "qtha.toml"
    config.write_text(f'state_dir = "{state}"\n')
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_")} | {"PYTHONPATH": str(Path.cwd())}

    def as_operator_would() -> None:
        os.umask(0o022)  # a usual login umask: without ours, everything would be world-readable

    for args in (["status"], ["ingest", str(data)]):
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args, "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=120, preexec_fn=as_operator_would,
        )
        assert done.returncode == 0, done.stderr
    modes = {p.relative_to(state).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [state, *state.rglob("*")]}
    assert modes["."] == 0o700 and modes["qtha.db"] == 0o600 and modes["inbox"] == 0o700
    assert all(m & 0o077 == 0 for m in modes.values()), modes


def test_history_prints_the_cause_of_a_failed_cycle_not_the_childs_traceback(config: Path) -> None:
    run(config, "status")
    store = open_store(f"sqlite:///{config.parent / 'state' / 'qtha.db'}")
    cycle = store.cycles.begin(owner="d#1", trigger_reasons=["no_champion"])
    error = (
        "training failed: CheckpointError: /m.gguf: corrupt; stderr tail:\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nCheckpointError: /m.gguf: corrupt"
    )
    store.cycles.fail(cycle.id, owner="d#1", error=error)
    store.close()
    code, out = run(config, "history")
    [line] = [x for x in out.splitlines() if x.startswith("cycle")]
    assert code == 0 and "Traceback" not in out
    assert line.endswith("training failed: CheckpointError: /m.gguf: corrupt (details: qtha history --json)")
    code, out = run(config, "history", "--json")
    assert "Traceback (most recent call last)" in out  # the whole text stays in the cycle row


def test_doctor_runs_the_start_up_checks_and_names_what_is_wrong(config: Path, tmp_path: Path) -> None:
    code, out = run(config, "doctor", "--no-model")
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "ok   configuration", "ok   state directory", "ok   database", "ok   metrics port"
    ]
    assert "schema version" in out and "is a writable directory" in out
    (tmp_path / "a-file").write_text("x")
    bad = tmp_path / "bad.toml"
    bad.write_text(f'state_dir = "{tmp_path / "a-file"}"\n[database]\nurl = "sqlite:///{tmp_path / "x.db"}"\n')
    code, out = run(bad, "doctor", "--no-model", "--json")
    checks = {c["name"]: c for c in json.loads(out)}
    assert code == 5 and not checks["state directory"]["ok"] and "is a file" in checks["state directory"]["detail"]
    bad.write_text("[policy]\ncooldown_s = inf\n")
    code, out = run(bad, "doctor", "--no-model")
    assert code == 2 and out.startswith("FAIL configuration: invalid configuration: policy.cooldown_s = inf")
