"""Summaries of the quality study's raw results: per-arm statistics over seeds, paired differences to LoRA,
verdicts, and the QTHA recipe the results point to. Pure functions of the results dict."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench._quality_eval import PairedDiff, paired_bootstrap

__all__ = ["ArmSummary", "Comparison", "Recommendation", "compare_to_lora", "recommend", "summarize"]

BASELINE = "lora"
# A QTHA arm whose median time per step exceeds this multiple of LoRA's is not an acceptable daemon default.
MAX_COST_RATIO = 2.0


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (sd is NaN for one seed)."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            return cls(math.nan, math.nan, 0)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values))

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0:
            return "—"
        return f"{self.mean:.{digits}f}" + (f" ± {self.sd:.{digits}f}" if self.n > 1 else " (1 seed)")


@dataclass(frozen=True)
class ArmSummary:
    """One arm on one task, over its seeds."""

    task: str
    arm: str
    seeds: tuple[int, ...]
    params: int
    bond_dim: int | None
    final_train_loss: Stat
    heldout_loss: Stat
    heldout_ppl: Stat
    exact_match: Stat
    step_s: Stat
    compile_s: Stat


def final_loss(losses: list[float]) -> float:
    """The training loss at the end of a run: the mean of its last tenth of steps (at least one), NaNs skipped."""
    k = max(1, len(losses) // 10)
    tail = [x for x in losses[-k:] if x == x]
    return statistics.fmean(tail) if tail else math.nan


def main_runs(results: dict[str, Any], task: str, arm: str) -> list[dict[str, Any]]:
    """The comparison runs (not learning-rate probes) of one arm on one task, by seed."""
    runs = [r for r in results["runs"] if r["task"] == task and r["arm"] == arm and not r["probe"]]
    return sorted(runs, key=lambda r: r["seed"])


def summarize(results: dict[str, Any]) -> dict[str, dict[str, ArmSummary]]:
    """Task → arm → summary, for every arm with at least one comparison run."""
    out: dict[str, dict[str, ArmSummary]] = {}
    for task in results["meta"]["profile"]["tasks"]:
        out[task] = {}
        for arm in results["meta"]["profile"]["arms"]:
            runs = main_runs(results, task, arm)
            if not runs:
                continue
            out[task][arm] = ArmSummary(
                task=task,
                arm=arm,
                seeds=tuple(r["seed"] for r in runs),
                params=runs[0]["trainable_params"],
                bond_dim=runs[0]["bond_dim"],
                final_train_loss=Stat.of([final_loss(r["train_losses"]) for r in runs]),
                heldout_loss=Stat.of([r["heldout_loss"] for r in runs]),
                heldout_ppl=Stat.of([r["heldout_ppl"] for r in runs]),
                exact_match=Stat.of([r["exact_match"] for r in runs if "exact_match" in r]),
                step_s=Stat.of([r["median_step_s"] for r in runs]),
                compile_s=Stat.of([r["compile_s"] for r in runs]),
            )
    return out


@dataclass(frozen=True)
class Comparison:
    """An arm against LoRA on one task and metric, paired per held-out example over their common seeds."""

    task: str
    arm: str
    metric: str
    seeds: tuple[int, ...]
    diff: PairedDiff
    lower_is_better: bool

    @property
    def verdict(self) -> str:
        """"beats", "loses to" or "is not significantly different from" LoRA (the interval decides)."""
        better = self.diff.high < 0 if self.lower_is_better else self.diff.low > 0
        worse = self.diff.low > 0 if self.lower_is_better else self.diff.high < 0
        return "beats" if better else "loses to" if worse else "is not significantly different from"


def _per_example(runs: list[dict[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    if metric == "exact_match":
        return np.mean([r["example_correct"] for r in runs], axis=0), None
    tokens = np.asarray(runs[0]["example_tokens"], np.float64)
    per_token = np.mean([np.asarray(r["example_nll"]) for r in runs], axis=0) / np.maximum(tokens, 1.0)
    return per_token, tokens


def compare_to_lora(results: dict[str, Any], *, seed: int) -> list[Comparison]:
    """Paired bootstrap differences (arm − LoRA) of held-out loss and, for maths, exact match."""
    n_resamples = results["meta"]["profile"]["bootstrap"]
    out = []
    for task in results["meta"]["profile"]["tasks"]:
        base = {r["seed"]: r for r in main_runs(results, task, BASELINE)}
        for arm in results["meta"]["profile"]["arms"]:
            if arm == BASELINE:
                continue
            runs = {r["seed"]: r for r in main_runs(results, task, arm)}
            common = tuple(sorted(set(runs) & set(base)))
            if not common:
                continue
            metrics = [("heldout_loss", True)] + ([("exact_match", False)] if "exact_match" in base[common[0]] else [])
            for metric, lower in metrics:
                a, w = _per_example([runs[s] for s in common], metric)
                b, _ = _per_example([base[s] for s in common], metric)
                diff = paired_bootstrap(a, b, weights=w, n_resamples=n_resamples, seed=seed)
                out.append(Comparison(task, arm, metric, common, diff, lower))
    return out


@dataclass(frozen=True)
class Recommendation:
    """The QTHA recipe the daemon should cold-start from, and why (all from measured numbers)."""

    arm: str
    qnn_mode: str
    qubits: int
    layers: int
    bond_dim: int
    learning_rate: float
    reasons: tuple[str, ...]


def _config_field(text: str, name: str) -> str:
    start = text.index(f"{name}=") + len(name) + 1
    end = min(i for i in (text.find(",", start), text.find(")", start)) if i >= 0)
    return text[start:end].strip("'\"")


def recommend(results: dict[str, Any], summary: dict[str, dict[str, ArmSummary]]) -> Recommendation | None:
    """The affordable QTHA configuration and learning rate with the lowest final training loss on maths.

    Candidates: every (arm, learning rate) pair run on the task (comparison runs and learning-rate probes) of a
    QTHA arm — not the classical ablation — whose mean median time per step is at most ``MAX_COST_RATIO``× LoRA's.
    Score: the final training loss averaged over the pair's seeds. The runs see every training batch once, so
    their late training loss is a loss on problems they had not seen, and the held-out test set plays no part in
    choosing the recipe (it only measures the comparison).
    """
    arms = results["meta"]["arms"]
    task = "maths" if "maths" in summary else next(iter(summary), None)
    if task is None or BASELINE not in summary[task]:
        return None
    lora_step = summary[task][BASELINE].step_s.mean
    pairs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    reasons = []
    for name, s in summary[task].items():
        if name == BASELINE or arms[name]["classical"]:
            continue
        ratio = s.step_s.mean / lora_step
        if ratio > MAX_COST_RATIO:
            reasons.append(f"{arms[name]['label']} is excluded: {ratio:.1f}× LoRA's time per step on {task} "
                           f"(limit {MAX_COST_RATIO:g}×)")
            continue
        for r in results["runs"]:
            if r["task"] == task and r["arm"] == name:
                pairs.setdefault((name, r["learning_rate"]), []).append(r)
    if not pairs:
        return None
    scored = sorted((statistics.fmean(final_loss(r["train_losses"]) for r in runs), name, lr, len(runs))
                    for (name, lr), runs in pairs.items())
    loss, best, lr, n = scored[0]
    s = summary[task][best]
    reasons.insert(0, f"{arms[best]['label']} at learning rate {lr:g} has the lowest final {task} training loss "
                      f"({loss:.4f}, {n} seed{'s' * (n > 1)}; {s.step_s.mean / lora_step:.2f}× LoRA's time per step, "
                      f"{s.params:,} parameters)")
    reasons.append("candidates (final training loss, seeds): " + "; ".join(
        f"{arms[a]['label']} at {rate:g} → {value:.4f} ({k})" for value, a, rate, k in scored))
    if n == 1:
        reasons.append("the winner rests on a single seed: a weak preference")
    config = main_runs(results, task, best)[0]["adapter_config"]
    return Recommendation(
        arm=best,
        qnn_mode=_config_field(config, "qnn_mode"),
        qubits=int(_config_field(config, "n_qubits")),
        layers=int(_config_field(config, "n_layers")),
        bond_dim=int(_config_field(config, "bond_dim")),
        learning_rate=lr,
        reasons=tuple(reasons),
    )
