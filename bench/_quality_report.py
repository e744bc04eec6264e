"""REPORT.md and the PNG plots of the quality study, rendered from its raw results (nothing here measures)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bench._quality_summary import (
    BASELINE,
    MAX_COST_RATIO,
    ArmSummary,
    Comparison,
    choose_learning_rates,
    chosen_rates,
    compare_ablations,
    compare_at_equal_rates,
    compare_to_lora,
    compared_rate,
    main_runs,
    recommend,
    reproduce,
    selection_loss,
    summarize,
)
from bench._quality_verdicts import verdict_section

__all__ = ["write_report"]

_METRIC_NAMES = {"heldout_loss": "held-out loss", "exact_match": "exact match"}


def _label(results: dict[str, Any], arm: str) -> str:
    return results["meta"]["arms"][arm]["label"]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_loss_curves(results: dict[str, Any], task: str, path: Path) -> None:
    """Training loss per arm (mean over seeds, moving average; band: min–max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in results["meta"]["profile"]["arms"]:
        runs = main_runs(results, task, arm)
        if not runs:
            continue
        curves = np.asarray([r["train_losses"] for r in runs], np.float64)
        window = max(1, curves.shape[1] // 15)
        smooth = np.asarray([_smooth(c, window) for c in curves])
        x = np.arange(smooth.shape[1]) + window
        ax.plot(x, smooth.mean(axis=0), label=f"{_label(results, arm)}, lr {compared_rate(results, arm, task):g} "
                                              f"({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(x, smooth.min(axis=0), smooth.max(axis=0), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.set_title(f"{task}: training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(results: dict[str, Any], summary: dict[str, dict[str, ArmSummary]], metric: str, path: Path) -> None:
    """Bars of ``metric`` per arm (mean ± sd over seeds) per task, the untrained base model as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in summary if metric != "exact_match" or t == "maths"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        arms = list(summary[task])
        stats = [getattr(summary[task][a], metric) for a in arms]
        means = [s.mean for s in stats]
        errs = [0.0 if math.isnan(s.sd) else s.sd for s in stats]
        ax.bar(range(len(arms)), means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(arms))])
        ax.set_xticks(range(len(arms)), [_label(results, a).replace(" ", "\n", 2) for a in arms], fontsize=7)
        base = results["base"].get(task, {}).get(metric)
        if base is not None:
            ax.axhline(base, color="k", linestyle="--", linewidth=1, label=f"base model {base:.3f}")
            ax.legend(fontsize=8)
        ax.set_title(f"{task}: {_METRIC_NAMES[metric]} (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _arm_table(results: dict[str, Any], task: str, rows: dict[str, ArmSummary]) -> list[str]:
    lora = rows.get(BASELINE)
    maths = task == "maths"
    head = ("| arm | peak lr | seeds | trainable params | ratio to LoRA | bond dim | s/step (median) | × LoRA time | "
            "compile s | late train loss | held-out loss | held-out ppl |" + (" exact match |" if maths else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = results["base"].get(task)
    if base is not None:
        lines.append(f"| base model (no training) | – | – | 0 | – | – | – | – | – | – | {base['heldout_loss']:.4f} | "
                     f"{base['heldout_ppl']:.2f} |" + (f" {base['exact_match']:.3f} |" if maths else ""))
    for arm, s in rows.items():
        ratio = f"{s.params / lora.params:.3f}" if lora else "–"
        cost = f"{s.fastest_step_s / lora.fastest_step_s:.2f}" if lora else "–"
        lines.append(
            f"| {_label(results, arm)} | {compared_rate(results, arm, task):g} | {len(s.seeds)} | {s.params:,} | {ratio} | "
            f"{s.bond_dim or '–'} | "
            f"{s.step_s.fmt(2)} | {cost} | {s.compile_s.mean:.0f} | {s.late_train_loss.fmt()} | {s.heldout_loss.fmt()} | "
            f"{s.heldout_ppl.fmt(2)} |" + (f" {s.exact_match.fmt(3)} |" if maths else ""))
    return lines


def _comparison_table(results: dict[str, Any], comparisons: list[Comparison]) -> list[str]:
    lines = ["| task | arm | metric | seeds paired | arm − LoRA | 95% CI | examples | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        d = c.diff
        lines.append(f"| {c.task} | {_label(results, c.arm)} | {_METRIC_NAMES[c.metric]} "
                     f"({'lower' if c.lower_is_better else 'higher'} is better) | "
                     f"{', '.join(map(str, c.seeds))} | {d.diff:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | "
                     f"{d.n_examples} | {c.verdict} LoRA |")
    return lines


def _profile_lines(results: dict[str, Any]) -> list[str]:
    p = results["meta"]["profile"]
    meta = results["meta"]
    lines = [
        f"- Profile **{p['name']}**, checkpoint `{meta['checkpoint']}`; arms: {', '.join(p['arms'])}.",
        f"- Training seeds {', '.join(map(str, p['seeds']))} for the cheap arms, the first {p['costly_seeds']} for "
        f"the costly ones; data seed {p['data_seed']} (the same problems and split for every arm and seed).",
        f"- Maths: {p['maths_steps']} steps × batch {p['maths_batch']} × {p['maths']['seq_len']} tokens; "
        f"dialogue: {p['dialogue_steps']} steps × batch {p['dialogue_batch']} × {p['dialogue']['seq_len']} tokens.",
        f"- Every arm: AdamW, {p['warmup_steps']} warm-up step(s) to its peak learning rate, then cosine decay to a "
        "tenth, global-norm clipping at 1, per-block remat, float32.",
    ]
    chosen = chosen_rates(results)
    ran = {(r["task"], r["arm"]) for r in results["runs"]}
    rates = "; ".join(f"{task}: " + ", ".join(f"{_label(results, a)} {compared_rate(results, a, task):g}"
                                            for a in p["arms"] if (task, a) in ran) for task in p["tasks"])
    if p.get("lr_grid"):
        follows = "; ".join(f"{_label(results, a)} at {_label(results, b)}'s" for a, b in p.get("lr_follows", [])
                            if a in p["arms"])
        swept = p.get("sweep_tasks") or ["maths"]
        lines.append(f"- Peak learning rate: swept over {', '.join(f'{x:g}' for x in p['lr_grid'])} on "
                     f"{' and '.join(swept)} (each task its own sweep, seed {p['seeds'][0]}) for every arm among "
                     f"{', '.join(_label(results, a) for a in p['sweep_arms'] if a in p['arms'])} that runs on the task; "
                     "each is compared at the rate of its lowest late training loss on that task (mean of the last "
                     "quarter of steps; the held-out set plays no part)" + (f"; {follows} rate" if follows else "")
                     + "." + ("" if set(p["tasks"]) <= set(swept) else
                              f" Other tasks use the rates chosen on {swept[0]}."))
        lines.append(f"- Rates compared at: {rates}." + ("" if chosen else
                                                         " (no sweep finished: every arm at the default rate)"))
    elif p.get("rates_from"):
        lines.append(f"- No sweep of its own: every arm at the rate the study in `{p['rates_from']}` (relative to "
                     f"this folder) chose for it on maths: {rates}.")
    else:
        lines.append(f"- Peak learning rate {p['learning_rate']:g} for every arm (no sweep).")
    reused = sum("unused_params" not in r for r in results["runs"])
    if reused:
        lines.append(f"- {len(results['runs']) - reused} of the {len(results['runs'])} runs were made by this version "
                     f"of the study; the other {reused} were made by the study before it, with the same run settings, "
                     "checkpoint and seeds, and reused (`--resume`).")
    lines += [f"- Task {name}: {text}." for name, text in meta["tasks"].items()]
    start = meta.get("machine_at_start", {})
    lines.append(f"- Machine: {start.get('cpus')} CPUs, {start.get('platform')}, jax {start.get('jax')} on "
                 f"{start.get('device')}. Times per step depend on what else the machine was running (see the "
                 "tables' note).")
    if "study_wall_s" in meta:
        busy = sum(r["train_wall_s"] + r["loss_eval_s"] + r.get("generate_s", 0.0) for r in results["runs"])
        lines.append(f"- Training and evaluation wall time summed over the runs: {busy / 60:.1f} min (runs of "
                     "processes that shared the study overlap in time).")
    else:
        lines.append("- **The study did not finish**: the tables hold the runs completed before it stopped.")
    return lines


def _verdict_lines(results: dict[str, Any], comparisons: list[Comparison]) -> list[str]:
    lines = []
    for c in comparisons:
        d = c.diff
        lines.append(f"- **{c.task}, {_label(results, c.arm)}** {c.verdict} LoRA on {_METRIC_NAMES[c.metric]}: "
                     f"{d.diff:+.4f} (95% CI [{d.low:+.4f}, {d.high:+.4f}], {d.n_examples} held-out examples, seeds "
                     f"{', '.join(map(str, c.seeds))}).")
    return lines


def _headline(results: dict[str, Any], summary: dict[str, dict[str, ArmSummary]],
              comparisons: list[Comparison]) -> list[str]:
    """Counts of verdicts and the parameter ratios: the study in a few lines."""
    lines = []
    quantum = [c for c in comparisons if not results["meta"]["arms"][c.arm]["classical"]]
    for verdict in ("beats", "is not significantly different from", "loses to"):
        hits = [c for c in quantum if c.verdict == verdict]
        if hits:
            lines.append(f"- QTHA {verdict} LoRA in {len(hits)} of {len(quantum)} comparisons: "
                         + "; ".join(f"{c.task} {_METRIC_NAMES[c.metric]} ({_label(results, c.arm)})" for c in hits)
                         + ".")
    if results["meta"].get("learning_rates"):
        lines.append("- Each arm is compared at its own peak learning rate on each task (see What was run).")
    for task, rows in summary.items():
        lora = rows.get(BASELINE)
        if lora is None:
            continue
        ratios = ", ".join(f"{_label(results, a)} {s.params / lora.params:.1%}" for a, s in rows.items()
                           if a != BASELINE)
        if ratios:
            lines.append(f"- Trainable parameters relative to LoRA's {lora.params:,} ({task}): {ratios}.")
        break
    return lines


def _sweep_section(results: dict[str, Any], bootstrap_seed: int, task: str) -> list[str]:
    """The learning-rate sweep's runs on ``task``, and LoRA against each swept arm at the same rate (one seed)."""
    p = results["meta"]["profile"]
    grid, first = p.get("lr_grid", []), p["seeds"][0]
    runs = sorted((r for r in results["runs"] if r["task"] == task and r["seed"] == first
                   and r["arm"] in p.get("sweep_arms", []) and r["learning_rate"] in grid),
                  key=lambda r: (p["arms"].index(r["arm"]), r["learning_rate"]))
    if not runs:
        return []
    maths = task == "maths"
    lines = [f"## Learning-rate sweep ({task}, one seed)", "",
             f"Seed {first}. The late training loss picks each arm's rate (chosen: ✓); held-out numbers are shown "
             "but were not used to choose.", "",
             "| arm | peak lr | late train loss | held-out loss |" + (" exact match |" if maths else "") + " chosen |",
             "|---|---|---|---|" + ("---|" if maths else "") + "---|"]
    lines += [f"| {_label(results, r['arm'])} | {r['learning_rate']:g} | {selection_loss(r['train_losses']):.4f} | "
              f"{r['heldout_loss']:.4f} |" + (f" {r.get('exact_match', math.nan):.3f} |" if maths else "")
              + f" {'✓' if r['learning_rate'] == compared_rate(results, r['arm'], task) else ''} |" for r in runs]
    choices = choose_learning_rates(results["runs"], p.get("sweep_arms", []), grid, task=task, seed=first)
    edges = [arm for arm, choice in choices.items() if choice.at_edge]
    if edges:
        lines += ["", "Chosen at the edge of the grid (the best rate may lie beyond it): "
                  + ", ".join(_label(results, a) for a in edges) + "."]
    equal = compare_at_equal_rates(results, seed=bootstrap_seed, task=task)
    if equal:
        lines += ["", f"### Same learning rate for both ({task}, one seed, paired over held-out examples)", "",
                  "The issue's literal protocol: one schedule for every arm. A shared rate favours whichever arm it "
                  "suits (a rate where one arm has diverged or barely moved decides the verdict), so these rows show "
                  "how differently the arms respond to the rate; the comparison at each arm's own rate above is the "
                  "fair one.", "",
                  "| peak lr | arm | metric | arm − LoRA | 95% CI | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {rate:g} | {_label(results, c.arm)} | {_METRIC_NAMES[c.metric]} | {c.diff.diff:+.4f} | "
                  f"[{c.diff.low:+.4f}, {c.diff.high:+.4f}] | {c.verdict} LoRA |" for rate, c in equal]
    return lines + [""]


def _reproduction_section(results: dict[str, Any], summary: dict[str, dict[str, ArmSummary]]) -> list[str]:
    """How this study's runs compare with the same runs of an earlier study (``--reference``)."""
    rows = reproduce(results)
    if not rows:
        return []
    ref = results["reference"]
    worst = max(abs(r.heldout_loss[1] - r.heldout_loss[0]) for r in rows)
    sds = [s.heldout_loss.sd for rows_ in summary.values() for s in rows_.values() if s.heldout_loss.n > 1]
    lines = ["## Reproducibility", "",
             f"{len(rows)} runs of this study were also made by an earlier run of the study (`{ref['path']}`, started "
             f"{ref['started_utc']}) with the same settings and seeds. Largest held-out loss difference: "
             f"{worst:.4f}" + (f"; the smallest seed-to-seed standard deviation of an arm here is {min(sds):.4f}"
                              if sds else "") + ".", "",
             "| run | held-out loss (earlier → now) | late train loss (earlier → now) | exact match (earlier → now) |",
             "|---|---|---|---|"]
    for r in rows:
        em = f"{r.exact_match[0]:.3f} → {r.exact_match[1]:.3f}" if r.exact_match else "–"
        lines.append(f"| `{r.key}` | {r.heldout_loss[0]:.4f} → {r.heldout_loss[1]:.4f} | "
                     f"{r.selection_loss[0]:.4f} → {r.selection_loss[1]:.4f} | {em} |")
    return lines + [""]


def write_report(results: dict[str, Any], out: Path, *, bootstrap_seed: int = 0,
                 full: dict[str, Any] | None = None) -> Path:
    """Writes ``REPORT.md`` and the PNG plots into ``out``; returns the report's path.

    Args:
        results: the study's raw results.
        out: the report folder.
        bootstrap_seed: seeds every bootstrap.
        full: the full profile's results (a study at this one's rates, in ``out/full``), for the verdicts; a study
            that took its rates from another (the full profile itself) gets no verdict section of its own.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    comparisons = compare_to_lora(results, seed=bootstrap_seed)
    plots = []
    for task in summary:
        name = f"loss_curves_{task}.png"
        plot_loss_curves(results, task, out / name)
        plots.append((f"{task}: training loss per arm", name))
    if "maths" in summary:
        plot_bars(results, summary, "exact_match", out / "accuracy.png")
        plots.append(("maths: held-out exact match", "accuracy.png"))
    plot_bars(results, summary, "heldout_loss", out / "heldout_loss.png")
    plots.append(("held-out loss per task", "heldout_loss.png"))
    rec = recommend(results, summary)

    lines = ["# Quality study: QTHA against LoRA on SmolLM2-135M-Instruct", "",
             "Produced by `bench/quality.py` (raw numbers in `results.json` beside this file); every number below "
             "was measured by that run. Reproduce with:", "", "```", f".venv/bin/python {results['meta']['command']}",
             "```", "", "## What was run", "", *_profile_lines(results), "",
             *([] if results["meta"]["profile"].get("rates_from")
               else verdict_section(results, full, seed=bootstrap_seed)),
             "## Where QTHA beats, matches or loses to LoRA", "",
             "Paired per held-out example (per-example values averaged over the seeds both arms ran), 95% percentile "
             f"bootstrap interval over examples ({results['meta']['profile']['bootstrap']} resamples). \"Not "
             "significantly different\" means the interval contains 0 — not that the arms are equal.", "",
             *_headline(results, summary, comparisons), "", "In detail:", "",
             *(_verdict_lines(results, comparisons) or ["- No comparison: LoRA or the other arms have no runs."]), "",
             "These are runs of a 135M-parameter model on two small tasks; they say nothing about much longer "
             "training, larger models or other data.", ""]
    for task, rows in summary.items():
        lines += [f"## {task.capitalize()}", "",
                  "Mean ± sample standard deviation over seeds. Late train loss: mean of the last quarter of the "
                  "steps. s/step: median wall time of a training step after compilation, over the arm's compared runs; "
                  "× LoRA time: the ratio of each arm's fastest run (lowest median of any of its runs on the task, "
                  "sweep included) to LoRA's: the machine was shared and its load changed a lot between runs, so an "
                  "arm's fastest run is its least disturbed one (absolute times mean little).", "",
                  *_arm_table(results, task, rows), ""]
    lines += ["## Paired differences to LoRA", "", *_comparison_table(results, comparisons), ""]
    ablations = compare_ablations(results, seed=bootstrap_seed)
    if ablations:
        lines += ["## Is the circuit doing the work?", "",
                  "Each classical stand-in keeps everything of its QTHA twin (MPOs, fusion, scale, the parameter "
                  "vector, seeds) and replaces only the circuit; see Arms for each. Paired over held-out examples, "
                  "each arm at its compared rate:", "",
                  "| task | metric | seeds | stand-in − QTHA | 95% CI | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {c.task} | {_METRIC_NAMES[c.metric]} | {', '.join(map(str, c.seeds))} | {c.diff.diff:+.4f} | "
                  f"[{c.diff.low:+.4f}, {c.diff.high:+.4f}] | the stand-in {c.verdict} {_label(results, twin)} |"
                  for twin, c in ablations]
        lines.append("")
    for task in results["meta"]["profile"].get("sweep_tasks") or ["maths"]:
        lines += _sweep_section(results, bootstrap_seed, task)
    lines += _reproduction_section(results, summary)
    lines += ["## Plots", ""] + [f"![{title}]({name})" for title, name in plots] + [""]
    lines += ["## Arms", ""]
    for arm, info in results["meta"]["arms"].items():
        configs = {r["adapter_config"] for r in results["runs"] if r["arm"] == arm}
        lines.append(f"- **{info['label']}** (`{arm}`): {info['note']}."
                     + "".join(f" Config: `{c}`." for c in sorted(configs)))
    lines += ["", "## Default QTHA recipe for the daemon's cold start", ""]
    if rec is None:
        lines.append("No QTHA arm was affordable or run; the recipe was not changed.")
    else:
        lines += [f"Chosen: **{rec.qnn_mode} mode, {rec.qubits} qubits, {rec.layers} layers, bond dimension "
                  f"{rec.bond_dim}, learning rate {rec.learning_rate:g}** (arm `{rec.arm}`).", ""]
        lines += [f"- {reason}." for reason in rec.reasons]
        lines += [f"- Rule: among QTHA arms (not the classical ablation) whose fastest run's time per step is at most "
                  f"{MAX_COST_RATIO:g}× LoRA's, the arm with the lowest late maths training loss (mean over seeds) at "
                  "its compared rate; the held-out test set is not used to choose.", ""]
    if results.get("not_run"):
        lines += ["## Planned runs that were not run", "",
                  "The study was stopped before these runs (time limit); the tables above do not include them.", ""]
        lines += [f"- `{key}`" for key in results["not_run"]] + [""]
    if results.get("failed"):
        lines += ["## Runs that failed", ""] + [f"- `{f['key']}`: {f['error']}" for f in results["failed"]] + [""]
    first = results["meta"]["profile"]["seeds"][0]
    samples = [(r["key"], s) for arm in results["meta"]["profile"]["arms"] for r in main_runs(results, "maths", arm)
               if r.get("samples") and r["seed"] == first for s in r["samples"][:1]] if "maths" in summary else []
    if samples:
        lines += ["## A held-out completion per arm (maths, first seed)", ""]
        for key, s in samples:
            lines.append(f"- `{key}` (answer {s['answer']}): {s['completion'][:300]!r}")
        lines.append("")
    path = out / "REPORT.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
