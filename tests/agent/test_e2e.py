"""End to end with real processes: ``qtha daemon`` on the tiny language model, driven by the ``qtha`` CLI.

One operator story, in order: cycle --now → promotion (status --json and /metrics over HTTP); a malformed inbox
file is quarantined with a reason; pause refuses cycles; SIGTERM during training leaves a resumable cycle that a
restarted daemon finishes from its checkpoint; rollback moves the champion pointer back.
"""

from __future__ import annotations

import json

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cycle.trainer import checkpoint_step, latest_checkpoint
from agent.store import open_store
from tests.agent.test_e2e_support import DaemonProcess, free_port, qtha, qtha_json, wait_for, write_config
from tests.fixtures.tiny_model import write_tiny_hf
from tests.support.browser import Chromium, assert_clean_load, find_chromium


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "qtha.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": port},
            "model": {"source": str(write_tiny_hf(tmp_path / "tiny"))},
            "training": {"steps": 4, "seq_len": 256, "batch_size": 4, "learning_rate": 0.01},
            # The tiny random model's probe answers are noise (whether one ends in 4 tokens is chance): no smoke
            # test here; tests/agent/test_heldout_pool.py and test_e2e_live.py cover it.
            "evaluation": {"examples": 6, "max_new_tokens": 4, "batch_size": 6, "smoke_probes": 0},
            "recipe": {"max_steps": 80},
            "policy": {"cooldown_s": 0.0, "min_slice_examples": 50, "promotion_confidence": 0.5},
            "scheduler": {
                "commands_interval_s": 0.3,
                "consider_interval_s": 1.0,
                "ingest_interval_s": 0.5,
                "lease_ttl_s": 5.0,
                "evaluate_interval_s": 3600.0,
            },
            "daemon": {"stop_timeout_s": 60.0},
        },
    )
    # Start paused, so that the first cycle is the operator's `cycle --now` (no_champion would fire at once).
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    store.overrides.set("paused", True, actor="test", reason="e2e setup")
    store.close()
    yield config, state, port


def _cycle(config: Path, cycle_id: int) -> dict | None:
    return next((c for c in qtha_json(config, "history")["cycles"] if c["id"] == cycle_id), None)


@pytest.mark.slow
def test_operator_story(setup: tuple[Path, Path, int], tmp_path: Path) -> None:
    config, state, port = setup
    # The CLI works with no daemon running: the commands queue in the database and apply in order at start-up.
    assert "queued resume" in qtha(config, "resume").stdout
    assert "queued cycle" in qtha(config, "cycle", "--now").stdout
    assert [c["kind"] for c in qtha_json(config, "status")["pending_commands"]] == ["resume", "cycle"]
    daemon = DaemonProcess(config, port, tmp_path / "daemon-1.log").start()
    try:
        wait_for(lambda: daemon.metric("qtha_leader") == 1.0, timeout=120, what=f"leader\n{daemon.log()}")
        # A malformed inbox file is quarantined with a reason, never lost.
        (state / "inbox" / "broken.jsonl").write_text('{"prompt": "2+2?", "answer": "4"}\n{not json\n')
        # cycle --now → a promoted first champion.
        first = wait_for(
            lambda: (c := _cycle(config, 1)) and c["state"] == "promoted" and c,
            timeout=300,
            what=f"cycle 1 promoted\n{daemon.log()[-3000:]}",
        )
        assert "run_now" in first["trigger_reasons"]
        # The supervised cycle's reference rows wait for a self-improvement round to replay them.
        reference = [json.loads(line) for line in (state / "self-improve" / "reference.jsonl").read_text().splitlines()]
        assert len(reference) >= 64 and {r["reason"] for r in reference} == {"reference-solution"}
        assert all("The answer is" in r["response"] for r in reference)
        status = qtha_json(config, "status")
        assert status["champion"]["version"] == first["candidate"] == "c000001"
        assert status["champion"]["metrics"]["eval_loss"] > 0
        # The training child measured its own CPU time: that, not the plan's estimate, is what the budget charges.
        trained = status["champion"]["metrics"]
        assert 0 < trained["train_cpu_s"] <= (os.cpu_count() or 1) * trained["train_wall_s"] + 1.0
        samples = wait_for(
            lambda: (s := daemon.scrape()) and s.get(("qtha_promotions_total", ())) == 1.0 and s,
            timeout=30,
            what="promotion in /metrics",
        )
        assert samples[("qtha_cycles_total", (("outcome", "promoted"),))] == 1.0
        assert samples[("qtha_champion_info", (("version", "c000001"),))] == 1.0
        assert samples[("qtha_train_steps_total", ())] == 4.0
        assert samples[("qtha_quantum_circuits_total", (("backend", "jax"),))] > 0
        reasons = list((state / "inbox-quarantine").glob("*.reason"))
        assert len(reasons) == 1 and "line 2: not valid JSON" in reasons[0].read_text()
        assert (state / "inbox-quarantine" / reasons[0].name.removesuffix(".reason")).exists()

        # Paused: an operator's cycle --now is refused by policy (exit 3) and nothing starts.
        assert "paused" in qtha(config, "pause", "--wait", "30").stdout
        refused = qtha(config, "cycle", "--now", "--wait", "30", check=False)
        assert refused.returncode == 3 and "paused" in refused.stderr
        assert qtha_json(config, "status")["cycle"] is None and qtha_json(config, "status")["paused"] is True

        # SIGTERM during training: the worker checkpoints, the daemon exits 0, the cycle stays resumable.
        qtha(config, "resume", "--wait", "30")
        # The same adapter as the champion's (warm start), more steps: a window to stop it in.
        recipe = {
            "adapter": "qtha",
            "qnn_mode": "weight",
            "qubits": 4,
            "layers": 2,
            "bond_dim": 2,
            "rank": 0,
            "steps": 60,
            "learning_rate": 0.02,
        }
        overrides = [arg for k, v in recipe.items() for arg in ("--recipe", f"{k}={v}")]
        qtha(config, "cycle", "--now", *overrides, "--wait", "30")
        wait_for(
            lambda: list((state / "cycles" / "2" / "checkpoints").glob("step-*")),
            timeout=300,
            what=f"a checkpoint of cycle 2\n{daemon.log()[-3000:]}",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(90) == 0, daemon.log()[-3000:]
    finally:
        daemon.stop(timeout=30)
    interrupted = _cycle(config, 2)
    assert interrupted["state"] == "train", interrupted
    newest = latest_checkpoint(state / "cycles" / "2")
    assert newest is not None
    steps_before = checkpoint_step(newest)
    assert 0 < steps_before < 60

    daemon = DaemonProcess(config, port, tmp_path / "daemon-2.log").start()
    try:
        second = wait_for(
            lambda: (c := _cycle(config, 2)) and c["state"] in ("promoted", "rejected", "failed") and c,
            timeout=300,
            what=f"cycle 2 finished\n{daemon.log()[-3000:]}",
        )
        assert second["resumes"] == 1 and second["state"] == "promoted", second
        log = daemon.log()
        assert "resume_from" in log and f"step-{steps_before:08d}" in log  # continued from the checkpoint
        # Rollback: the pointer (row and `current` symlink) moves back to the first champion.
        assert qtha_json(config, "status")["champion"]["version"] == "c000002"
        assert "rolled back" in qtha(config, "rollback", "--wait", "30").stdout
        assert qtha_json(config, "status")["champion"]["version"] == "c000001"
        assert (state / "current").resolve().name == "c000001"
        wait_for(
            lambda: daemon.metric("qtha_rollbacks_total") == 1.0, timeout=30, what="rollback in /metrics"
        )
        assert daemon.metric("qtha_champion_info", version="c000001") == 1.0
        versions = {v["id"]: v["status"] for v in qtha_json(config, "versions")}
        assert versions == {"c000001": "champion", "c000002": "rejected"}
        _console_in_a_browser(config, state, port)
    finally:
        assert daemon.stop(timeout=90) == 0


def _console_in_a_browser(config: Path, state: Path, port: int) -> None:
    """The operator's console over the real daemon's metrics port, and each cycle's report file: in headless
    Chromium when it is installed (screenshots to $QTHA_CONSOLE_SCREENSHOTS when set), over plain HTTP otherwise."""
    import urllib.request

    reports = [Path(qtha(config, "report", str(n)).stdout.strip()) for n in (1, 2)]
    assert reports == [state / "cycles" / "1" / "report.html", state / "cycles" / "2" / "report.html"]
    base = f"http://127.0.0.1:{port}"
    page = urllib.request.urlopen(f"{base}/console", timeout=30).read().decode()
    assert 'class="big">c000001<' in page and 'href="/console/cycles/2"' in page
    if find_chromium() is None:
        return
    out = Path(os.environ.get("QTHA_CONSOLE_SCREENSHOTS") or state / "screenshots")
    with Chromium() as browser:
        front = browser.open(f"{base}/console")
        assert_clean_load(front, base)
        assert "c000001" in front.text and "rollback" in front.text
        browser.screenshot(out / "tiny-console.png")
        card = browser.open(f"{base}/console/cycles/2")
        assert_clean_load(card, base)
        assert "Cycle 2" in card.text and "train loss" in card.text and "promote" in card.text
        assert browser.evaluate("document.querySelectorAll('svg rect.bar').length") >= 1
        browser.screenshot(out / "tiny-cycle-2.png")
        saved = browser.open(reports[0].as_uri())
        assert saved.errors == [] and "Cycle 1" in saved.text
