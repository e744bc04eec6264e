"""The daemon in-process on a fresh SQLite database, with the numpy stand-in trainer (fast): jobs, commands,
cycle, promotion, metrics over HTTP, pause, rollback, policy overrides, SIGHUP-style reload, clean stop.

The end-to-end tests with real subprocesses and the tiny language model are in test_e2e.py.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import policies
from agent.config import QthaConfig, load_config
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import Daemon, build_runtime
from agent.daemon.runtime import Runtime
from agent.store import CycleState, OperatorCommand
from tests.support.standin_trainer import StandinTrainer


def wait_for(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "condition") -> object:
    """Polls ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_config(state_dir: Path, **extra: object) -> QthaConfig:
    return load_config(
        None,
        state_dir=str(state_dir),
        metrics={"host": "127.0.0.1", "port": free_port()},
        scheduler={
            "commands_interval_s": 0.2,
            "consider_interval_s": 0.3,
            "evaluate_interval_s": 3600,
            "ingest_interval_s": 0.3,
            "lease_ttl_s": 3.0,
            "misfire_grace_s": 5,
        },
        training={"steps": 12},
        # The stand-in scores are negative squared errors: no absolute floor.
        policy={"promotion_floor": -1e9, "cooldown_s": 0, "min_slice_examples": 5},
        **extra,
    )


@dataclass
class Running:
    daemon: Daemon
    rt: Runtime
    thread: threading.Thread

    def submit(self, kind: str, args: dict | None = None, key: str | None = None) -> OperatorCommand:
        return self.rt.store.commands.submit(
            kind, args or {}, key=key or f"{kind}-{time.monotonic_ns()}", actor="test"
        )

    def resume_and_cycle(self, recipe: dict) -> OperatorCommand:
        """Queues resume + cycle --now so that one pass of the commands job applies both (as if queued while the
        daemon was down); otherwise the trigger may fire no_champion between the two."""
        # The commands job reads the queue under commands_lock: holding it, both rows land in the same pass even
        # when a pass is already running (pausing the job does not stop a pass in progress).
        with self.rt.commands_lock:
            self.submit("resume")
            return self.submit("cycle", {"recipe": recipe})

    def applied(self, command: OperatorCommand) -> OperatorCommand:
        return wait_for(
            lambda: (c := self.rt.store.commands.get(command.key)).applied_at and c,
            what=f"command {command.kind} applied",
        )

    def scrape(self) -> dict[tuple[str, tuple], float]:
        url = f"http://127.0.0.1:{self.daemon.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def new_paused_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer: Callable[[Runtime], StandinTrainer]
) -> Runtime:
    """A runtime on a fresh state directory, paused, not started (a test may prepare state first)."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "QTHA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    rt = build_runtime(fast_config(tmp_path / "state"), cycles=PolicyCycleDriver(trainer))
    # Paused from the start: with no champion the trigger would fire at election, before a test acts.
    rt.store.overrides.set("paused", True, actor="test", reason="fixture")
    return rt


def run_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer: Callable[[Runtime], StandinTrainer]
) -> Iterator[Running]:
    """An in-process daemon on a fresh state directory, paused, leading; stopped when the generator closes."""
    rt = new_paused_runtime(tmp_path, monkeypatch, trainer)
    try:
        with started(rt) as handle:
            yield handle
    finally:
        rt.store.close()


@contextmanager
def started(rt: Runtime) -> Iterator[Running]:
    """Runs the daemon on ``rt`` in a thread until the block ends; yields once it leads."""
    daemon = Daemon(rt, loop_interval_s=0.1)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: rt.leadership.is_leader() and daemon.metrics_port, what="leadership")
        yield Running(daemon, rt, thread)
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "daemon did not stop"


@pytest.fixture
def paused_rt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    rt = new_paused_runtime(tmp_path, monkeypatch, lambda rt: StandinTrainer())
    yield rt
    rt.store.close()


@pytest.fixture
def running(paused_rt: Runtime) -> Iterator[Running]:
    with started(paused_rt) as handle:
        yield handle


def test_cycle_now_promotes_and_metrics_show_it(running: Running) -> None:
    rt = running.rt
    command = running.applied(running.resume_and_cycle({"steps": 8}))
    assert command.ok, command.result
    promoted = wait_for(
        lambda: [c for c in rt.store.cycles.list() if c.state is CycleState.PROMOTED], what="a promoted cycle"
    )
    cycle = promoted[0]
    assert "run_now" in cycle.trigger_reasons and "no_champion" in cycle.trigger_reasons
    assert cycle.recipe["steps"] == 8  # the operator's recipe override reached the trainer
    champion = rt.store.champion.get()
    assert champion.version_id == cycle.candidate_id and champion.epoch == 1
    kinds = [d.kind for d in rt.store.decisions.list()]
    assert {"trigger", "recipe", "promotion"} <= set(kinds)
    assert rt.store.overrides.get("run_now") is None  # consumed
    samples = wait_for(
        lambda: (s := running.scrape())[("qtha_promotions_total", ())] == 1 and s,
        what="promotion in /metrics",
    )
    assert samples[("qtha_cycles_total", (("outcome", "promoted"),))] == 1
    assert samples[("qtha_champion_info", (("version", cycle.candidate_id),))] == 1
    assert samples[("qtha_decisions_total", (("action", "run"), ("kind", "trigger")))] >= 1
    assert samples[("qtha_leader", ())] == 1
    assert samples[("qtha_cycle_duration_seconds_count", ())] == 1
    assert samples[("qtha_last_success_timestamp_seconds", ())] > 0
    # A restarted daemon's gauges come from the database, not from zero.
    from agent.daemon.jobs import update_gauges
    from agent.daemon.metrics import QthaMetrics, new_registry

    fresh = QthaMetrics(new_registry(), version="0")
    update_gauges(fresh, rt)
    finished = rt.store.cycles.get(cycle.id).finished_at
    assert fresh.value("qtha_last_success_timestamp_seconds") == finished.timestamp()
    assert fresh.value("qtha_champion_info", version=cycle.candidate_id) == 1


def _learner_trials(rt: Runtime) -> list:
    import optuna

    from agent.daemon.policy_inputs import recipe_config

    storage = rt.cycles.planner.storage(rt)  # type: ignore[attr-defined]
    name = policies.study_name_for(recipe_config(rt.config))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_each_cycle_outcome_reaches_the_learner_and_an_override_is_a_trial_of_its_own(running: Running) -> None:
    import optuna

    rt = running.rt
    running.applied(running.resume_and_cycle({}))
    first = wait_for(lambda: [c for c in rt.store.cycles.list() if c.state.terminal], what="cycle 1 ended")[0]
    assert dict(first.plan)["source"] == "learner" and dict(first.plan)["trial"] == 0
    assert "_trial" not in first.recipe and policies.Recipe.from_dict(first.recipe).steps == 12
    [told] = wait_for(lambda: [t for t in _learner_trials(rt) if t.state.is_finished()], what="trial 0 told")
    evidence = rt.store.decisions.list(kind="promotion", cycle_id=first.id)[-1].evidence
    gain = evidence["candidate_mean"] - (evidence.get("champion_mean") or 0.0)
    assert told.number == 0 and told.state is optuna.trial.TrialState.COMPLETE
    assert told.value == pytest.approx(gain, abs=0.01)  # gain minus a small CPU penalty
    # An operator's recipe: the learner's proposal for this cycle is withdrawn (never told an outcome that is
    # not its own), and what really ran is told as a trial of its own.
    wait_for(lambda: rt.store.cycles.active() is None, what="idle")
    running.applied(running.submit("cycle", {"recipe": {"steps": 9, "learning_rate": 0.02}}))
    second = wait_for(
        lambda: [c for c in rt.store.cycles.list() if c.id != first.id and c.state.terminal], what="cycle 2 ended"
    )[0]
    assert dict(second.plan)["source"] == "operator" and dict(second.plan)["trial"] is None
    assert (second.recipe["steps"], second.recipe["learning_rate"]) == (9, 0.02)
    trials = wait_for(lambda: (t := _learner_trials(rt)) and len(t) == 3 and t, what="the operator's trial")
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,  # cycle 1, the learner's cold start
        optuna.trial.TrialState.FAIL,  # the proposal the operator's recipe displaced
        optuna.trial.TrialState.COMPLETE,  # cycle 2, as it ran
    ]
    assert trials[2].user_attrs["source"] == "operator"
    assert (trials[2].params["steps"], trials[2].params["learning_rate"]) == (9, 0.02)


def test_a_bad_recipe_override_is_refused_naming_the_field(running: Running) -> None:
    rt = running.rt
    command = running.applied(running.resume_and_cycle({"qubits": 5}))  # weight mode needs an even count
    assert command.ok is False and "qubits" in (command.result or "") and "even" in (command.result or "")
    assert rt.store.overrides.get("run_now") is None  # refused when applied: never queued for the trigger
    # (no_champion may start a cycle of the learner's right after; none ever trains the refused recipe)
    assert all(c.recipe.get("qubits") != 5 for c in rt.store.cycles.list())


def test_pause_stops_cycles_and_refuses_cycle_now(running: Running) -> None:
    rt = running.rt
    assert running.applied(running.submit("pause")).ok
    refused = running.applied(running.submit("cycle"))
    assert refused.ok is False and "paused" in (refused.result or "")
    assert wait_for(lambda: running.scrape()[("qtha_paused", ())] == 1, what="qtha_paused 1")
    # The trigger keeps deciding "wait: paused" while a cycle would otherwise fire (no champion yet).
    wait_for(
        lambda: any(
            d.kind == "trigger" and d.action == "wait" and any(r.get("code") == "paused" for r in d.reasons)
            for d in rt.store.decisions.list()
        ),
        what="paused decision",
    )
    assert rt.store.cycles.list() == []
    assert running.applied(running.submit("resume")).ok
    # Resumed: the first champion is trained on its own (no_champion fires).
    wait_for(lambda: rt.store.champion.get().version_id, what="first champion after resume")


def test_rollback_and_pin_move_the_pointer(running: Running) -> None:
    rt = running.rt
    running.applied(running.resume_and_cycle({"steps": 4}))
    first = wait_for(lambda: rt.store.champion.get().version_id, what="first champion")
    # A second, better-trained candidate: promotion needs a gain; more steps give one on the stand-in task.
    wait_for(lambda: rt.store.cycles.active() is None, what="idle")
    running.applied(running.submit("cycle", {"recipe": {"steps": 40}}))
    second = wait_for(
        lambda: (v := rt.store.champion.get().version_id) != first and v, what="second champion"
    )
    command = running.applied(running.submit("rollback"))
    assert command.ok, command.result
    assert rt.store.champion.get().version_id == first
    assert (rt.config.state_dir / "current").resolve().name == first  # the symlink moved with the row
    samples = running.scrape()
    assert samples[("qtha_rollbacks_total", ())] == 1
    assert samples[("qtha_champion_info", (("version", first),))] == 1
    assert rt.store.versions.get(second).status == "rejected"
    refused = running.applied(running.submit("promote", {"version": second}))
    assert refused.ok is False and "rejected" in (refused.result or "")
    assert running.applied(running.submit("pin")).ok and rt.store.champion.get().pinned


def test_policy_set_is_validated_and_applied(running: Running) -> None:
    rt = running.rt
    assert running.applied(running.submit("policy_set", {"key": "cooldown_s", "value": "120"})).ok
    assert rt.policy().cooldown_s == 120.0
    bad = running.applied(running.submit("policy_set", {"key": "cooldown_s", "value": "-5"}))
    assert bad.ok is False and "cooldown_s" in (bad.result or "")
    typo = running.applied(running.submit("policy_set", {"key": "cooldown", "value": "5"}))
    assert typo.ok is False and "unknown policy key 'cooldown'" in (typo.result or "")
    assert running.applied(running.submit("policy_unset", {"key": "cooldown_s"})).ok
    assert rt.policy().cooldown_s == 0.0
    # Idempotency: the same key twice is one command, applied once.
    a = running.submit("pause", key="same-key")
    b = running.submit("pause", key="same-key")
    assert a.id == b.id
    assert running.applied(a).ok
    audit = [
        e for e in rt.store.audit.entries() if e.kind == "command" and e.details.get("key") == "same-key"
    ]
    assert len(audit) == 1


def test_an_invalid_stored_override_is_ignored_with_a_warning_and_can_be_unset(
    paused_rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    rt = paused_rt
    # As an older qtha (or a manual edit) could have stored them: each would have crashed every start before.
    for key, value in {"cooldown_s": float("inf"), "quiet_hours": [25, 99], "gone_key": 1, "staleness_h": 48}.items():
        rt.store.overrides.set(f"policy.{key}", value, actor="test", reason="legacy")
    with started(rt) as handle:
        policy = rt.policy()
        assert (policy.cooldown_s, policy.quiet_hours, policy.staleness_h) == (0.0, None, 48.0)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "override" in r.getMessage()]
        assert len(warnings) == 3 and any("cooldown_s = inf is invalid" in w for w in warnings)
        rt.policy()
        assert len([r for r in caplog.records if "override" in r.getMessage()]) == 3  # once per value
        for key in ("cooldown_s", "quiet_hours", "gone_key"):
            assert handle.applied(handle.submit("policy_unset", {"key": key})).ok
        assert set(rt.store.overrides.all()) == {"paused", "policy.staleness_h"}


@pytest.mark.parametrize("versions", [("v1", "v2"), ("v1",)])
def test_a_tampered_champion_at_start_is_replaced_logged_and_counted(
    paused_rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture, versions: tuple[str, ...]
) -> None:
    rt = paused_rt
    assert rt.leadership.tick()  # champion moves are fenced by the leader lease (issue 18)
    for epoch, version in enumerate(versions):
        src = tmp_path / f"src-{version}"
        src.mkdir()
        (src / "adapter.safetensors").write_bytes(version.encode() * 64)
        rt.registry.publish_candidate(version, src, base_fingerprint="base", adapter_kind="qtha")
        rt.registry.promote(version, expected_epoch=epoch, actor="test", reason="setup")
    tampered = rt.config.state_dir / "versions" / versions[-1] / "adapter.safetensors"
    tampered.write_bytes(b"tampered" + tampered.read_bytes()[8:])
    with started(rt) as handle:
        expected = versions[-2] if len(versions) > 1 else None
        wait_for(lambda: rt.store.champion.get().version_id == expected, what="champion replaced")
        assert handle.scrape()[("qtha_rollbacks_total", ())] == 1.0
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(("rolled back to v1" if expected else "serving the base model") in w for w in warnings)


def test_inbox_file_is_ingested_or_quarantined(running: Running) -> None:
    rt = running.rt
    (rt.config.inbox_dir / "good.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n')
    (rt.config.inbox_dir / "bad.jsonl").write_text('{"prompt": "1+1?"\n')
    reason = wait_for(lambda: list(rt.config.quarantine_dir.glob("*.reason")), what="quarantine")
    assert "not valid JSON" in reason[0].read_text()
    wait_for(lambda: rt.store.metrics.samples("ingested_examples"), what="ingested sample")
    assert rt.inbox.count() == 1
    # The job notes each scan's results after the scan, in the files' order (good.jsonl was written first).
    wait_for(lambda: any(e.kind == "quarantine" and "bad.jsonl" in e.reason for e in rt.store.audit.entries()),
             what="the quarantine in the audit log")


def test_sighup_reload_applies_new_intervals_and_keeps_a_bad_file_out(tmp_path: Path) -> None:
    path = tmp_path / "qtha.toml"
    state = tmp_path / "state"
    path.write_text(
        f'state_dir = "{state}"\n[metrics]\nenabled = false\n[scheduler]\nconsider_interval_s = 300\n'
    )
    config = load_config(path)
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()))
    daemon = Daemon(rt, config_path=path, loop_interval_s=0.1)
    daemon.start()
    try:
        assert daemon.scheduler.get_job("consider").trigger.interval.total_seconds() == 300
        path.write_text(
            f'state_dir = "{state}"\n[metrics]\nenabled = false\n[scheduler]\nconsider_interval_s = 7\n'
            "[policy]\ncooldown_s = 42\n"
        )
        daemon.request_reload()
        daemon.step()
        assert daemon.scheduler.get_job("consider").trigger.interval.total_seconds() == 7
        assert rt.policy().cooldown_s == 42
        path.write_text("[scheduler]\nconsider_interval_s = -1\n")  # invalid: the running config stays
        daemon.request_reload()
        daemon.step()
        assert rt.config.scheduler.consider_interval_s == 7
        path.write_text(f'state_dir = "{tmp_path / "elsewhere"}"\n[metrics]\nenabled = false\n')
        daemon.request_reload()
        daemon.step()
        assert rt.config.state_dir == state  # needs a restart; reported, not applied
    finally:
        daemon.shutdown()
        rt.store.close()


def test_prometheus_queries_become_metric_samples(tmp_path: Path) -> None:
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [
                            {"metric": {"version": "v1"}, "value": [1700000000, "0.625"]},
                            {"metric": {"version": "v2", "instance": "a:1"}, "value": [1700000000, "0.5"]},
                        ],
                    },
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = fast_config(
        tmp_path / "state",
        observe={
            "prometheus_url": f"http://127.0.0.1:{server.server_address[1]}",
            "queries": {"live_feedback_score": "avg by (version) (answer_score)"},
        },
    )
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()))
    try:
        assert rt.leadership.tick()
        from agent.daemon import jobs

        jobs.observe_prometheus(rt)
        # The sample with an extra label fits no series: refused (logged, counted), the other one stored.
        [sample] = rt.store.metrics.samples("live_feedback_score")
        assert (sample.value, dict(sample.labels), sample.source) == (0.625, {"version": "v1"}, "prometheus")
        assert rt.metrics.value("qtha_backend_errors_total", backend="prometheus", kind="refused_sample") == 1
    finally:
        server.shutdown()
        server.server_close()
        rt.store.close()


def test_housekeeping_removes_finished_cycle_work(running: Running) -> None:
    from agent.daemon import jobs

    rt = running.rt
    running.applied(running.resume_and_cycle({"steps": 3}))
    wait_for(lambda: rt.store.champion.get().version_id, what="a champion")
    # The status line moves on from "idle: cycle 1 ..." within milliseconds (the next trigger check), so wait on
    # the recorded state instead of a transient status string.
    wait_for(
        lambda: rt.store.cycles.get(1).state.terminal and rt.status.startswith("idle"), what="idle after cycle 1"
    )
    assert (rt.config.state_dir / "cycles" / "1").is_dir()
    wait_for(lambda: rt.cycles.housekeeping(rt) is not None, what="the driver's lock released")
    jobs.housekeeping(rt)  # the job itself: idempotent
    # The work files (checkpoints, recipe) went; the cycle's report (agent/console) stays.
    assert [p.name for p in (rt.config.state_dir / "cycles" / "1").iterdir()] == ["report.html"]
    assert (rt.config.state_dir / "current").resolve().name == rt.store.champion.get().version_id


def test_learn_false_trains_the_configured_recipe_and_leaves_the_learner_alone(tmp_path: Path) -> None:
    from agent.daemon.planner import Planner
    from agent.daemon.policy_inputs import cold_start_recipe

    config = fast_config(tmp_path / "state", recipe={"learn": False})
    rt = build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()))
    try:
        planned = Planner().plan(rt, None)
        assert planned is not None
        recipe, plan = planned
        assert recipe == cold_start_recipe(config) and (plan.source, plan.trial) == ("config", None)
        assert plan.planned_cpu_s > 0
        assert not (config.state_dir / "recipes.db").exists()  # no study was asked
        recipe, plan = Planner().plan(rt, {"steps": 7})
        assert recipe.steps == 7 and plan.source == "operator"
    finally:
        rt.store.close()
