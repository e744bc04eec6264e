"""The quality study's pipeline end to end on the tiny checkpoint, and its statistics on hand-made numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._quality_stats import paired_bootstrap  # noqa: E402
from bench._quality_summary import Comparison, compare_at_equal_rates  # noqa: E402
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
               "arms": ["lora", "qtha_w4"], "learning_rate": 1e-3, "warmup_steps": 1, "lr_grid": [1e-3, 3e-3],
               "sweep_arms": ["lora", "qtha_w4"], "lr_follows": [], "bootstrap": 200, "data_seed": 0, "maths_steps": 4, "maths_batch": 2,
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

    # The sweep (seed 0 at both rates) chose 1e-3 for LoRA and 3e-3 for QTHA: the comparison runs are at those.
    runs = [run("lora", s, [0.0, 1.0, 0.0, 0.0]) for s in (0, 1)]
    lora_fast = run("lora", 0, [0.0, 0.0, 0.0, 0.0], lr=3e-3, probe=True)
    lora_fast["train_losses"] = [2.0, 1.5, 1.2, 1.1]
    slow = run("qtha_w4", 0, [0.0, 0.0, 0.0, 0.0], probe=True)
    runs += [lora_fast, slow] + [run("qtha_w4", s, [1.0, 1.0, 0.0, 1.0], lr=3e-3, probe=s == 0) for s in (0, 1)]
    for r in runs[-2:]:
        r["train_losses"] = [2.0, 1.2, 0.8, 0.7]
    return {"format": 1, "meta": {"profile": profile, "checkpoint": "x", "command": "bench/quality.py --x",
                                  "tasks": {"maths": "4 problems"}, "arms": arms,
                                  "learning_rates": {"lora": 1e-3, "qtha_w4": 3e-3}},
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
    assert summary["maths"]["qtha_w4"].seeds == (0, 1)  # the runs at its chosen rate, not the 1e-3 sweep run
    assert summary["maths"]["lora"].late_train_loss.mean == pytest.approx(0.9)  # last quarter of 4 steps: 1 step
    rec = recommend(results, summary)
    assert (rec.qnn_mode, rec.qubits, rec.layers, rec.bond_dim, rec.learning_rate) == ("weight", 4, 2, 3, 3e-3)
    equal = compare_at_equal_rates(results, seed=0)
    assert [(rate, c.arm, c.metric) for rate, c in equal] == [
        (1e-3, "qtha_w4", "heldout_loss"), (1e-3, "qtha_w4", "exact_match"),
        (3e-3, "qtha_w4", "heldout_loss"), (3e-3, "qtha_w4", "exact_match")]
    assert equal[3][1].diff.diff == pytest.approx(0.75)  # seed 0 at 3e-3: QTHA 3/4 against LoRA 0/4
    out = tmp_path_factory.mktemp("report")
    report = write_report(results, out).read_text()
    assert "QTHA w4** beats LoRA on held-out loss" in report
    assert "learning rate 0.003" in report
    assert "## Learning-rate sweep" in report and "| 0.003 | QTHA w4 | exact match | +0.7500 |" in report
    assert (out / "accuracy.png").stat().st_size > 0


def test_learning_rate_is_chosen_by_late_training_loss_and_never_a_diverged_rate() -> None:
    from bench._quality_summary import choose_learning_rates, selection_loss

    assert selection_loss([4.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert selection_loss([1.0, float("nan")]) == float("inf")

    def run(arm: str, lr: float, losses: list[float], seed: int = 0, task: str = "maths") -> dict:
        return {"arm": arm, "learning_rate": lr, "train_losses": losses, "seed": seed, "task": task}

    runs = [run("lora", 1e-3, [2.0, 1.0]), run("lora", 1e-2, [2.0, 0.5]), run("lora", 3e-2, [2.0, float("nan")]),
            run("lora", 1e-1, [2.0, 0.1], seed=1), run("lora", 1e-1, [2.0, 0.1], task="dialogue"),
            run("qtha", 1e-3, [2.0, 0.7]), run("qtha", 1e-2, [2.0, 0.7])]
    chosen = choose_learning_rates(runs, ["lora", "qtha", "absent"], [1e-3, 1e-2, 3e-2, 1e-1])
    assert chosen["lora"].learning_rate == 1e-2  # 3e-2 diverged; 1e-1 ran only on another seed or task
    assert chosen["qtha"].learning_rate == 1e-3 and chosen["qtha"].at_edge  # a tie goes to the smaller rate
    assert "absent" not in chosen and not chosen["lora"].at_edge


def test_quick_profile_sweeps_every_arm_on_maths_and_dialogue_then_compares_each_at_its_rate() -> None:
    from bench._quality_profiles import PROFILES, plan_comparison, plan_sweep

    quick = PROFILES["quick"]
    costly = {"qtha_act", "classical_act"}
    sweep = plan_sweep(quick, costly)
    grid = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    assert {(s.task, s.arm, s.learning_rate) for s in sweep} == {
        ("maths", a, lr) for a in ("lora", "qtha_w10", "qtha_w4", "qtha_act", "classical_act") for lr in grid} | {
        ("dialogue", a, lr) for a in ("lora", "qtha_w10") for lr in grid}  # the arms that run on dialogue
    assert {s.seed for s in sweep} == {0}
    chosen = {"maths": {"lora": 3e-3, "qtha_w10": 3e-2, "qtha_w4": 1e-2, "qtha_act": 1e-2, "classical_act": 1e-1},
              "dialogue": {"lora": 1e-2, "qtha_w10": 3e-2}}
    plan = plan_comparison(quick, costly, chosen)
    rates = {(p.task, p.arm): {q.learning_rate for q in plan if (q.task, q.arm) == (p.task, p.arm)} for p in plan}
    assert rates == {("maths", "lora"): {3e-3}, ("maths", "qtha_w10"): {3e-2}, ("maths", "qtha_w4"): {1e-2},
                     ("maths", "classical_w10"): {3e-2},  # the weight-mode ablation follows its twin
                     ("maths", "qtha_act"): {1e-2}, ("maths", "classical_act"): {1e-1},
                     ("dialogue", "lora"): {1e-2}, ("dialogue", "qtha_w10"): {3e-2}}
    count = {(a, t): sum(p.arm == a and p.task == t for p in plan) for t, a in rates}
    assert set(count.values()) == {3}  # three seeds of every arm on every task it runs on
    assert plan[-1].arm == "classical_act"  # the costly runs last: a study cut short keeps the complete comparisons
    # Seed 0 at the chosen rate is a sweep run: it has the same key, so it is reused, not retrained.
    assert {p.key for p in plan} & {s.key for s in sweep} == {
        "maths/lora/seed0/lr0.003", "maths/qtha_w10/seed0/lr0.03", "maths/qtha_w4/seed0/lr0.01",
        "maths/qtha_act/seed0/lr0.01", "maths/classical_act/seed0/lr0.1", "dialogue/lora/seed0/lr0.01",
        "dialogue/qtha_w10/seed0/lr0.03"}


def test_full_profile_runs_the_three_arms_three_seeds_at_the_quick_studys_rates() -> None:
    from bench._quality_profiles import PROFILES, plan_comparison, plan_sweep, rates_by_task

    full = PROFILES["full"]
    assert (full.maths_steps, full.maths.n_test, full.tasks) == (120, 200, ("maths",))
    assert plan_sweep(full, {"qtha_act"}) == []
    chosen = rates_by_task({"lora": 3e-3, "qtha_w10": 3e-2, "qtha_act": 1e-2})  # a first-study results file
    plan = plan_comparison(full, {"qtha_act"}, chosen)
    assert sorted((p.arm, p.seed, p.learning_rate) for p in plan) == sorted(
        (a, s, lr) for a, lr in (("lora", 3e-3), ("qtha_w10", 3e-2), ("qtha_act", 1e-2)) for s in (0, 1, 2))
    # Seed by seed, activation mode in every round: a study cut short holds the first seeds of all three arms.
    assert [(p.arm, p.seed) for p in plan[:4]] == [("lora", 0), ("qtha_w10", 0), ("qtha_act", 0), ("lora", 1)]


@pytest.mark.slow
def test_smoke_study_sweeps_compares_reports_and_reproduces(tmp_path_factory: pytest.TempPathFactory) -> None:
    from bench.quality import main

    root = tmp_path_factory.mktemp("quality")
    checkpoint = write_tiny_hf(root / "tiny")
    out = root / "out"
    args = ["--profile", "smoke", "--checkpoint", str(checkpoint), "--seeds", "0", "--arms", "lora", "classical_w10",
            "--tasks", "maths", "--lr-grid", "0.001", "0.01", "--sweep-arms", "lora"]
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    chosen = results["meta"]["learning_rates"]["maths"]["lora"]  # task → arm → rate
    assert chosen in (0.001, 0.01)
    keys = {r["key"] for r in results["runs"]}
    # The sweep's two LoRA runs (one of them the comparison run), and the ablation at the default rate.
    assert keys == {"maths/lora/seed0/lr0.001", "maths/lora/seed0/lr0.01", "maths/classical_w10/seed0/lr0.001"}
    for run in results["runs"]:
        assert len(run["train_losses"]) == run["steps"] == 2
        assert len(run["example_correct"]) == len(run["example_nll"]) == 4
    report = (out / "REPORT.md").read_text()
    assert "exact match" in report and "bench/quality.py" in report and "## Learning-rate sweep" in report
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "loss_curves_maths.png").stat().st_size > 0

    # The same study again, against the first: every run is repeated, and with the same seeds it reproduces.
    again = root / "again"
    assert main([*args, "--out", str(again), "--reference", str(out / "results.json")]) == 0
    rerun = json.loads((again / "results.json").read_text())
    assert {r["key"] for r in rerun["reference"]["runs"]} == keys
    first = {r["key"]: r["heldout_loss"] for r in results["runs"]}
    for r in rerun["runs"]:
        assert r["heldout_loss"] == pytest.approx(first[r["key"]], abs=1e-4)
    assert "## Reproducibility" in (again / "REPORT.md").read_text()

    # A reference made with other run settings is not a repeat of these runs: refused, naming the reason.
    with pytest.raises(SystemExit, match="other run settings"):
        main([*args, "--maths-steps", "3", "--out", str(root / "other"), "--reference", str(out / "results.json")])


def test_the_ablation_is_paired_with_the_quantum_arm_it_follows() -> None:
    from bench._quality_summary import compare_ablations

    results = _synthetic_results()
    results["meta"]["arms"]["cl"] = {"label": "stand-in", "note": "", "cheap": True, "classical": True}
    results["meta"]["profile"]["arms"].append("cl")
    results["meta"]["profile"]["lr_follows"] = [["cl", "qtha_w4"]]
    twin = [r for r in results["runs"] if r["arm"] == "qtha_w4" and r["learning_rate"] == 3e-3]
    for r in twin:  # the stand-in gets one problem fewer right on every seed, at its twin's rate
        results["runs"].append({**r, "arm": "cl", "key": r["key"].replace("qtha_w4", "cl"),
                                "example_correct": [1.0, 1.0, 0.0, 0.0], "exact_match": 0.5})
    [(name, loss), (_, em)] = compare_ablations(results, seed=0)
    assert name == "qtha_w4" and loss.seeds == (0, 1) and loss.diff.diff == pytest.approx(0.0)
    assert em.diff.diff == pytest.approx(-0.25)
    # A stand-in swept at its own rate names its twin instead of following its rate.
    results["meta"]["profile"]["lr_follows"] = []
    results["meta"]["arms"]["cl"]["twin"] = "qtha_w4"
    results["meta"]["learning_rates"] = {"maths": {"lora": 1e-3, "qtha_w4": 3e-3, "cl": 3e-3}}
    assert [(t, c.arm, c.metric) for t, c in compare_ablations(results, seed=0)] == [
        ("qtha_w4", "cl", "heldout_loss"), ("qtha_w4", "cl", "exact_match")]


def test_verdicts_answer_each_question_with_its_interval(tmp_path_factory: pytest.TempPathFactory) -> None:
    from bench._quality_report import write_report
    from bench._quality_verdicts import activation_wins

    results = _synthetic_results()
    for r in results["runs"]:  # make the QTHA arm an activation-mode one
        r["adapter_config"] = r["adapter_config"].replace("'weight'", "'activation'")
    results["meta"]["learning_rates"] = {"maths": results["meta"]["learning_rates"]}
    assert activation_wins(results, None) == ["maths held-out loss (quick profile): QTHA w4 beats LoRA"]
    report = write_report(results, tmp_path_factory.mktemp("verdicts")).read_text()
    section = report[report.index("## Verdicts"):report.index("## Where QTHA")]
    assert "### Does activation mode match LoRA?" in section
    assert "QTHA w4 at its own rate 0.003 (maths, 2 seeds) against LoRA at 0.001: **better than LoRA on maths " \
           "held-out loss" in section
    assert "maths, held-out loss: QTHA w4 − LoRA -0.3333 (95% CI [" in section
    assert "### The full profile (120 maths steps, 200 test problems)\n\nNot run." in section
    assert "### Does activation mode win anywhere?\n\n**Yes**" in section

