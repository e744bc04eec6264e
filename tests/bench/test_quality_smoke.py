"""The quality study's pipeline end to end on the tiny checkpoint, and its statistics on hand-made numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._quality_eval import paired_bootstrap  # noqa: E402
from bench._quality_summary import Comparison  # noqa: E402
from tests.fixtures.tiny_model import write_tiny_hf  # noqa: E402


def test_paired_bootstrap_is_the_weighted_mean_difference_and_brackets_it() -> None:
    arm, base = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])
    d = paired_bootstrap(arm, base, n_resamples=500, seed=0)
    assert d.diff == pytest.approx(0.5)
    assert d.low <= d.diff <= d.high
    weighted = paired_bootstrap(np.array([2.0, 1.0]), np.array([1.0, 1.0]), weights=np.array([3.0, 1.0]),
                                n_resamples=200, seed=0)
    assert weighted.diff == pytest.approx(0.75)  # (3·1 + 1·0) / 4


def test_verdict_follows_the_interval_and_the_metric_direction() -> None:
    def verdict(low: float, high: float, lower_is_better: bool) -> str:
        diff = paired_bootstrap(np.array([0.0]), np.array([0.0]), n_resamples=1, seed=0)
        diff = type(diff)((low + high) / 2, low, high, 1, 1, 0.95)
        return Comparison("t", "a", "m", (0,), diff, lower_is_better).verdict

    assert verdict(-0.2, -0.1, True) == "beats"
    assert verdict(0.1, 0.2, True) == "loses to"
    assert verdict(0.1, 0.2, False) == "beats"
    assert verdict(-0.1, 0.2, False) == "is not significantly different from"


def _synthetic_results() -> dict:
    """Results as bench/quality.py writes them, for two arms, two seeds, four held-out examples."""
    profile = {"name": "synthetic", "seeds": [0, 1], "costly_seeds": 1, "tasks": ["maths"],
               "arms": ["lora", "qtha_w4"], "learning_rate": 1e-3, "warmup_steps": 1, "lr_probe": [3e-3],
               "lr_probe_arms": ["qtha_w4"], "bootstrap": 200, "data_seed": 0, "maths_steps": 4, "maths_batch": 2,
               "dialogue_steps": 4, "dialogue_batch": 2, "maths": {"seq_len": 8}, "dialogue": {"seq_len": 8}}
    arms = {"lora": {"label": "LoRA", "note": "", "cheap": True, "classical": False},
            "qtha_w4": {"label": "QTHA w4", "note": "", "cheap": True, "classical": False}}

    def run(arm: str, seed: int, correct: list[float], lr: float = 1e-3, probe: bool = False) -> dict:
        config = ("LoraConfig(rank=8)" if arm == "lora" else
                  "QthaAdapterConfig(n_qubits=4, n_layers=2, qnn_mode='weight', bond_dim=3, alpha=16.0)")
        return {"key": f"maths/{arm}/seed{seed}/lr{lr:g}", "task": "maths", "arm": arm, "seed": seed,
                "learning_rate": lr, "probe": probe, "trainable_params": 100 if arm == "lora" else 24,
                "bond_dim": None if arm == "lora" else 3, "adapter_config": config,
                "train_losses": [2.0, 1.5, 1.0, 0.9], "compile_s": 5.0, "median_step_s": 1.0 if arm == "lora" else 1.1,
                "heldout_loss": 1.0 if arm == "lora" else 0.8, "heldout_ppl": 2.7,
                "example_nll": [2.0, 4.0, 2.0, 4.0] if arm == "lora" else [1.0, 3.0, 1.0, 3.0],
                "example_tokens": [2.0, 4.0, 2.0, 4.0], "exact_match": float(np.mean(correct)),
                "example_correct": correct, "samples": []}

    runs = [run("lora", s, [0.0, 1.0, 0.0, 0.0]) for s in (0, 1)]
    runs += [run("qtha_w4", s, [1.0, 1.0, 0.0, 1.0]) for s in (0, 1)]
    probe = run("qtha_w4", 0, [1.0, 1.0, 1.0, 1.0], lr=3e-3, probe=True)
    probe["train_losses"] = [2.0, 1.2, 0.8, 0.7]  # the recipe's learning rate follows the final training loss
    runs.append(probe)
    return {"format": 1, "meta": {"profile": profile, "checkpoint": "x", "command": "bench/quality.py --x",
                                  "tasks": {"maths": "4 problems"}, "arms": arms},
            "base": {"maths": {"heldout_loss": 2.0, "heldout_ppl": 7.4, "exact_match": 0.0}}, "runs": runs}


def test_report_summarises_compares_and_recommends(tmp_path_factory: pytest.TempPathFactory) -> None:
    from bench._quality_report import write_report
    from bench._quality_summary import compare_to_lora, recommend, summarize

    results = _synthetic_results()
    summary = summarize(results)
    assert summary["maths"]["qtha_w4"].exact_match.mean == pytest.approx(0.75)
    loss, em = compare_to_lora(results, seed=0)
    assert loss.diff.diff == pytest.approx(-4 / 12) and loss.verdict == "beats"  # 1 nat less on each of 4, 12 tokens
    assert em.diff.diff == pytest.approx(0.5)
    rec = recommend(results, summary)
    assert (rec.qnn_mode, rec.qubits, rec.layers, rec.bond_dim, rec.learning_rate) == ("weight", 4, 2, 3, 3e-3)
    out = tmp_path_factory.mktemp("report")
    report = write_report(results, out).read_text()
    assert "QTHA w4** beats LoRA on held-out loss" in report
    assert "learning rate 0.003" in report
    assert (out / "accuracy.png").stat().st_size > 0


@pytest.mark.slow
def test_smoke_study_writes_results_report_and_plots(tmp_path_factory: pytest.TempPathFactory) -> None:
    from bench.quality import main

    root = tmp_path_factory.mktemp("quality")
    checkpoint = write_tiny_hf(root / "tiny")
    out = root / "out"
    assert main(["--profile", "smoke", "--checkpoint", str(checkpoint), "--out", str(out), "--seeds", "0",
                 "--arms", "lora", "classical_w10", "--tasks", "maths"]) == 0
    results = json.loads((out / "results.json").read_text())
    keys = {r["key"] for r in results["runs"]}
    assert keys == {"maths/lora/seed0/lr0.001", "maths/classical_w10/seed0/lr0.001"}
    for run in results["runs"]:
        assert len(run["train_losses"]) == run["steps"] == 2
        assert len(run["example_correct"]) == len(run["example_nll"]) == 4
    report = (out / "REPORT.md").read_text()
    assert "exact match" in report and "bench/quality.py" in report
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "loss_curves_maths.png").stat().st_size > 0
