"""``qtha cycle --now --recipe method=self-improve`` end to end on the tiny model, with real processes.

The tiny random model never writes a marked answer, so the round's safeguards must stop the cycle before training:
the cycle ends REJECTED with the reason (a verdict on the recipe's data, not a crash), and the decision log shows
how many samples were drawn, verified and used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.store import UsageRecord, open_store
from tests.agent.test_e2e_support import DaemonProcess, free_port, qtha, qtha_json, wait_for, write_config
from tests.fixtures.tiny_model import write_tiny_hf


@pytest.mark.slow
def test_self_improve_cycle_samples_verifies_and_logs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "qtha.toml",
        {
            "state_dir": str(state),
            "metrics": {"host": "127.0.0.1", "port": port},
            "model": {"source": str(write_tiny_hf(tmp_path / "tiny"))},
            "training": {"steps": 2, "seq_len": 128, "batch_size": 2, "learning_rate": 0.01},
            "evaluation": {"examples": 4, "max_new_tokens": 8, "batch_size": 4},
            "policy": {"cooldown_s": 0.0},
            "scheduler": {"commands_interval_s": 0.3, "consider_interval_s": 1.0, "ingest_interval_s": 0.5,
                          "lease_ttl_s": 5.0, "evaluate_interval_s": 3600.0},
            "daemon": {"stop_timeout_s": 60.0},
        },
    )
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    store.overrides.set("paused", True, actor="test", reason="self-improve e2e")
    # Real prompts: one a client sent the server, one the operator dropped without an answer.
    store.usage.record_many([UsageRecord(
        request_id="r1", at=store.clock.now(), version_id="base", status=200, error=None,
        messages=({"role": "user", "content": "Kim has 7 boxes of 6 eggs. How many eggs?"},), answers=("…",),
        finish_reasons=("stop",), sampling={}, latency_s=0.1, ttft_s=0.01, prompt_tokens=9, completion_tokens=1)])
    store.close()
    (state / "dataset").mkdir()
    (state / "dataset" / "20260101T000000000000-prompts.jsonl").write_text(
        '{"prompt": "Lee has 9 bags of 4 buns. How many buns?"}\n')
    recipe = {"method": "self-improve", "samples_k": 2, "pool_prompts": 3, "temperature": 1.0, "worked_examples": 1}
    args = [arg for k, v in recipe.items() for arg in ("--recipe", f"{k}={v}")]
    qtha(config, "resume")
    assert "queued cycle" in qtha(config, "cycle", "--now", *args).stdout
    daemon = DaemonProcess(config, port, tmp_path / "daemon.log").start()
    try:
        cycle = wait_for(
            lambda: next((c for c in qtha_json(config, "history")["cycles"] if c["id"] == 1 and c["state"] in
                          ("failed", "promoted", "rejected", "held")), None),
            timeout=400,
            what=f"cycle 1 finished\n{daemon.log()[-3000:]}",
        )
    finally:
        daemon.stop()
    assert cycle["state"] == "rejected" and not cycle["error"], cycle
    assert cycle["outcome"].startswith("rejected: self-improve stopped: collapse"), cycle
    assert "self-improve stopped: collapse" in qtha(config, "history").stdout
    store = open_store(f"sqlite:///{state / 'qtha.db'}")
    try:
        (decision,) = store.decisions.list(kind="self-improve", cycle_id=1)
        assert decision.action == "stop"
        assert decision.evidence["drawn"] == 6.0 and decision.evidence["verified"] == 0.0
        assert decision.evidence["used"] == 0.0 and decision.evidence["sampling_cpu_s"] > 0
        assert "6 samples drawn, 0 verified, 0 used (+0 replayed) from 3 prompts (1 usage log, 1 inbox, 1 generated)" \
            in " ".join(r["message"] for r in decision.reasons)
        assert store.cycles.get(1).recipe["method"] == "self-improve"
        assert store.cycles.get(1).recipe["worked_examples"] == 1  # sampled with one worked example shown
    finally:
        store.close()
    # A stopped round leaves nothing behind for the next cycles to replay.
    assert not (state / "self-improve" / "verified.jsonl").exists()
