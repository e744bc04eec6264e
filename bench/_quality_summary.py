"""Summaries of the quality study's raw results: per-arm statistics over seeds, paired differences to LoRA,
verdicts, and the QTHA recipe the results point to. Pure functions of the results dict."""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench._quality_profiles import rates_by_task, task_learning_rate
from bench._quality_stats import PairedDiff, paired_bootstrap

__all__ = ["ArmSummary", "Comparison", "LearningRateChoice", "Recommendation", "Reproduction", "choose_learning_rates",
           "chosen_rates", "compare_ablations", "compare_arms", "compare_at_equal_rates", "compared_rate", "main_runs",
           "stand_in_pairs", "compare_to_lora", "recommend", "reproduce", "selection_loss", "summarize"]

BASELINE = "lora"
# A QTHA arm whose time per step exceeds this multiple of LoRA's is not an acceptable daemon default. Times are
# compared through each arm's fastest run (the lowest median step time of any of its runs on the task): the machine
# is shared, and the runs of one study can meet very different loads (the first study's activation-mode run took
# 3.3 s a step, a later one 10.3 s at the same size), so an arm's fastest run is its least disturbed.
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
    late_train_loss: Stat
    heldout_loss: Stat
    heldout_ppl: Stat
    exact_match: Stat
    step_s: Stat
    fastest_step_s: float  # the lowest median step time of any of the arm's runs on the task (any rate or seed)
    compile_s: Stat


def selection_loss(losses: list[float]) -> float:
    """What picks a learning rate or a recipe: the mean training loss over the last quarter of a run's steps.

    Each batch is seen once, so a late batch's loss is a loss on examples the model had not trained on; a quarter
    (not the last step) averages over enough of them to rank rates. Infinite when the run diverged (NaN steps).
    """
    k = max(1, len(losses) // 4)
    tail = losses[-k:]
    return math.inf if any(x != x or math.isinf(x) for x in tail) else statistics.fmean(tail)


@dataclass(frozen=True)
class LearningRateChoice:
    """The peak learning rate a swept arm is compared at, and the sweep it was picked from."""

    arm: str
    learning_rate: float
    scores: tuple[tuple[float, float], ...]  # (rate, selection loss) in grid order

    @property
    def at_edge(self) -> bool:
        """True when the chosen rate is the grid's smallest or largest (the optimum may lie outside it)."""
        rates = [rate for rate, _ in self.scores]
        return len(rates) > 1 and self.learning_rate in (min(rates), max(rates))


def choose_learning_rates(runs: list[dict[str, Any]], sweep_arms: Sequence[str], grid: Collection[float], *,
                          task: str = "maths", seed: int = 0) -> dict[str, LearningRateChoice]:
    """Each swept arm's rate with the lowest :func:`selection_loss` among its sweep runs (task, seed, rates).

    Ties go to the smaller rate. An arm with no finished sweep run gets no choice (it trains at the default rate).
    """
    out = {}
    for arm in sweep_arms:
        scored = sorted((r["learning_rate"], selection_loss(r["train_losses"])) for r in runs
                        if r["arm"] == arm and r["task"] == task and r["seed"] == seed and r["learning_rate"] in grid)
        if scored:
            best = min(scored, key=lambda rs: (rs[1], rs[0]))[0]
            out[arm] = LearningRateChoice(arm, best, tuple(scored))
    return out


def chosen_rates(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Task → arm → the rate the study chose (or took from another study), whatever the results file's format."""
    profile = results["meta"]["profile"]
    first = (profile.get("sweep_tasks") or ["maths"])[0]
    return rates_by_task(results["meta"].get("learning_rates", {}), first)


def compared_rate(results: dict[str, Any], arm: str, task: str = "maths") -> float:
    """The peak learning rate at which ``arm`` is compared with LoRA on ``task`` (the sweep's choice on that task
    or on the first swept task, the one of the arm it follows, or the profile's default)."""
    return task_learning_rate(results["meta"]["profile"], chosen_rates(results), arm, task)


def main_runs(results: dict[str, Any], task: str, arm: str) -> list[dict[str, Any]]:
    """The comparison runs of one arm on one task, by seed: those at the arm's compared rate on that task."""
    rate = compared_rate(results, arm, task)
    runs = [r for r in results["runs"] if r["task"] == task and r["arm"] == arm and r["learning_rate"] == rate]
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
                params=runs[0]["trainable_params"] - runs[0].get("unused_params", 0),
                bond_dim=runs[0]["bond_dim"],
                late_train_loss=Stat.of([selection_loss(r["train_losses"]) for r in runs]),
                heldout_loss=Stat.of([r["heldout_loss"] for r in runs]),
                heldout_ppl=Stat.of([r["heldout_ppl"] for r in runs]),
                exact_match=Stat.of([r["exact_match"] for r in runs if "exact_match" in r]),
                step_s=Stat.of([r["median_step_s"] for r in runs]),
                fastest_step_s=min(r["median_step_s"] for r in results["runs"] if r["task"] == task and r["arm"] == arm),
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


def _compare(task: str, arm: str, runs: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], *,
             n_resamples: int, seed: int) -> list[Comparison]:
    common = tuple(sorted(set(runs) & set(base)))
    if not common:
        return []
    out = []
    metrics = [("heldout_loss", True)] + ([("exact_match", False)] if "exact_match" in base[common[0]] else [])
    for metric, lower in metrics:
        a, w = _per_example([runs[s] for s in common], metric)
        b, _ = _per_example([base[s] for s in common], metric)
        diff = paired_bootstrap(a, b, weights=w, n_resamples=n_resamples, seed=seed)
        out.append(Comparison(task, arm, metric, common, diff, lower))
    return out


def compare_arms(results: dict[str, Any], task: str, arm: str, other: str, *, seed: int) -> list[Comparison]:
    """``arm`` − ``other`` on ``task``, each at its compared rate, paired over their common seeds (the verdict reads
    "beats", "loses to" or "is not significantly different from" ``other``)."""
    runs = {r["seed"]: r for r in main_runs(results, task, arm)}
    base = {r["seed"]: r for r in main_runs(results, task, other)}
    return _compare(task, arm, runs, base, n_resamples=results["meta"]["profile"]["bootstrap"], seed=seed)


def compare_to_lora(results: dict[str, Any], *, seed: int) -> list[Comparison]:
    """Paired bootstrap differences (arm − LoRA) of held-out loss and, for maths, exact match, each arm at its
    compared rate."""
    profile = results["meta"]["profile"]
    return [c for task in profile["tasks"] for arm in profile["arms"] if arm != BASELINE
            for c in compare_arms(results, task, arm, BASELINE, seed=seed)]


def stand_in_pairs(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(classical stand-in, quantum twin) of every stand-in run in the study: its recorded twin, or else (results of
    the first studies) the QTHA arm whose rate it follows."""
    profile, arms = results["meta"]["profile"], results["meta"]["arms"]
    follows = dict((a, b) for a, b in profile.get("lr_follows", []))
    pairs = [(name, info.get("twin") or follows.get(name, "")) for name, info in arms.items() if info["classical"]]
    return [(a, twin) for a, twin in pairs if twin in arms]


def compare_ablations(results: dict[str, Any], *, seed: int) -> list[tuple[str, Comparison]]:
    """(quantum twin, comparison) of every classical stand-in against its QTHA twin, each at its compared rate,
    paired over their common seeds: is the circuit doing the work?"""
    return [(twin, c) for ablation, twin in stand_in_pairs(results) for task in results["meta"]["profile"]["tasks"]
            for c in compare_arms(results, task, ablation, twin, seed=seed)]


def compare_at_equal_rates(results: dict[str, Any], *, seed: int,
                           task: str = "maths") -> list[tuple[float, Comparison]]:
    """(rate, comparison) of every swept arm against LoRA at each rate of the sweep on ``task`` (first seed): the
    same-schedule comparison, one seed per rate."""
    profile = results["meta"]["profile"]
    first = profile["seeds"][0]
    sweep = [r for r in results["runs"] if r["task"] == task and r["seed"] == first
             and r["learning_rate"] in profile.get("lr_grid", [])]
    out = []
    for rate in profile.get("lr_grid", []):
        at = {r["arm"]: r for r in sweep if r["learning_rate"] == rate}
        if BASELINE not in at:
            continue
        for arm in profile.get("sweep_arms", []):
            if arm != BASELINE and arm in at:
                out += [(rate, c) for c in _compare(task, arm, {first: at[arm]}, {first: at[BASELINE]},
                                                    n_resamples=profile["bootstrap"], seed=seed)]
    return out


@dataclass(frozen=True)
class Reproduction:
    """One run measured twice with the same settings and seed: by an earlier study and by this one."""

    key: str
    heldout_loss: tuple[float, float]  # (earlier, now)
    selection_loss: tuple[float, float]
    exact_match: tuple[float, float] | None


def reproduce(results: dict[str, Any]) -> list[Reproduction]:
    """Pairs this study's runs with the earlier study's copies of them (``results["reference"]``, recorded by
    ``bench/quality.py --reference``; only runs whose run settings and checkpoint matched were kept)."""
    reference = {r["key"]: r for r in results.get("reference", {}).get("runs", [])}
    out = []
    for run in results["runs"]:
        old = reference.get(run["key"])
        if old is None:
            continue
        em = (old["exact_match"], run["exact_match"]) if "exact_match" in run and "exact_match" in old else None
        out.append(Reproduction(run["key"], (old["heldout_loss"], run["heldout_loss"]),
                                (selection_loss(old["train_losses"]), selection_loss(run["train_losses"])), em))
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
    """The affordable QTHA configuration, at its compared learning rate, with the lowest late training loss on maths.

    Candidates: every QTHA arm — not the classical ablation — whose fastest run's median time per step is at most
    ``MAX_COST_RATIO``× LoRA's, at the rate it is compared at (a swept arm's rate was itself picked by the same
    loss on the sweep). Score: :func:`selection_loss` averaged over the arm's seeds. Each training batch is seen
    once, so a late training loss is a loss on problems the run had not yet seen, and the held-out test set plays
    no part in choosing the recipe (it only measures the comparison).
    """
    arms = results["meta"]["arms"]
    task = "maths" if "maths" in summary else next(iter(summary), None)
    if task is None or BASELINE not in summary[task]:
        return None
    lora_step = summary[task][BASELINE].fastest_step_s
    scored = []
    reasons = []
    for name, s in summary[task].items():
        if name == BASELINE or arms[name]["classical"]:
            continue
        ratio = s.fastest_step_s / lora_step
        if ratio > MAX_COST_RATIO:
            reasons.append(f"{arms[name]['label']} is excluded: {ratio:.1f}× LoRA's time per step on {task} "
                           f"(limit {MAX_COST_RATIO:g}×)")
            continue
        runs = main_runs(results, task, name)
        scored.append((statistics.fmean(selection_loss(r["train_losses"]) for r in runs), name,
                       runs[0]["learning_rate"], len(runs)))
    if not scored:
        return None
    scored.sort()
    loss, best, lr, n = scored[0]
    s = summary[task][best]
    reasons.insert(0, f"{arms[best]['label']} at learning rate {lr:g} has the lowest late {task} training loss "
                      f"({loss:.4f}, mean of {n} seed{'s' * (n > 1)}; {s.fastest_step_s / lora_step:.2f}× LoRA's time "
                      f"per step, {s.params:,} parameters)")
    reasons.append("candidates (late training loss, seeds): " + "; ".join(
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
