"""The quality report's answers to issue 20's questions, each a verdict with its paired bootstrap intervals, from
the quick study's results and, when it was run, the full profile's (nothing here measures)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench._quality_summary import (
    BASELINE,
    Comparison,
    compare_arms,
    compared_rate,
    main_runs,
    stand_in_pairs,
)

__all__ = ["activation_arms", "activation_wins", "verdict_section"]

_METRICS = {"heldout_loss": "held-out loss", "exact_match": "exact match"}


def _label(results: dict[str, Any], arm: str) -> str:
    return results["meta"]["arms"][arm]["label"]


def _mode(results: dict[str, Any], arm: str) -> str:
    """"activation", "weight" or "" (LoRA, or an arm with no run), from the adapter config the runs recorded."""
    config = next((r["adapter_config"] for r in results["runs"] if r["arm"] == arm), "")
    return next((m for m in ("activation", "weight") if f"qnn_mode='{m}'" in config), "")


def activation_arms(results: dict[str, Any]) -> list[str]:
    """The QTHA arms with a per-token circuit (not the classical stand-ins)."""
    arms = results["meta"]["arms"]
    return [a for a in results["meta"]["profile"]["arms"] if a in arms and not arms[a]["classical"]
            and _mode(results, a) == "activation"]


def _weight_arms(results: dict[str, Any]) -> list[str]:
    arms = results["meta"]["arms"]
    return [a for a in results["meta"]["profile"]["arms"] if a in arms and not arms[a]["classical"]
            and _mode(results, a) == "weight"]


def _row(results: dict[str, Any], c: Comparison, other: str, *, prefix: str = "") -> str:
    d = c.diff
    seeds = ", ".join(map(str, c.seeds))
    return (f"- {prefix}{c.task}, {_METRICS[c.metric]}: {_label(results, c.arm)} − {_label(results, other)} "
            f"{d.diff:+.4f} (95% CI [{d.low:+.4f}, {d.high:+.4f}], {d.n_examples} examples, seed{'s' * (len(c.seeds) > 1)} "
            f"{seeds}): {_label(results, c.arm)} **{c.verdict}** {_label(results, other)}.")


def _tally(comparisons: Sequence[Comparison]) -> dict[str, list[str]]:
    """Verdict → the "task metric" places it was reached."""
    out: dict[str, list[str]] = {}
    for c in comparisons:
        out.setdefault(c.verdict, []).append(f"{c.task} {_METRICS[c.metric]}")
    return out


def _answer(comparisons: Sequence[Comparison], *, better: str, worse: str, tie: str) -> str:
    """One line: where the arm is better, worse, or not distinguishable (``better``/``worse``/``tie`` say it)."""
    if not comparisons:
        return "**Not measured**: no paired runs."
    tally = _tally(comparisons)
    parts = []
    if "beats" in tally:
        parts.append(f"{better} on {', '.join(tally['beats'])}")
    if "loses to" in tally:
        parts.append(f"{worse} on {', '.join(tally['loses to'])}")
    if "is not significantly different from" in tally:
        parts.append(f"{tie} on {', '.join(tally['is not significantly different from'])}")
    return "**" + "; ".join(parts) + ".**"


def _vs(results: dict[str, Any], arm: str, other: str, tasks: Sequence[str], seed: int) -> list[Comparison]:
    return [c for task in tasks for c in compare_arms(results, task, arm, other, seed=seed)]


def _seeds(results: dict[str, Any], task: str, arm: str) -> str:
    runs = main_runs(results, task, arm)
    return f"{len(runs)} seed{'s' * (len(runs) != 1)}" if runs else "not run"


def activation_wins(results: dict[str, Any], full: dict[str, Any] | None, *, seed: int = 0) -> list[str]:
    """Where an activation-mode arm is significantly better than LoRA or than the weight-mode arms ("task metric
    (study): arm vs other"); empty when it wins nowhere."""
    wins = []
    for name, res in (("quick", results), ("full", full)):
        if res is None:
            continue
        for arm in activation_arms(res):
            for other in [BASELINE, *_weight_arms(res)]:
                wins += [f"{c.task} {_METRICS[c.metric]} ({name} profile): {_label(res, arm)} beats "
                         f"{_label(res, other)}" for c in _vs(res, arm, other, res["meta"]["profile"]["tasks"], seed)
                         if c.verdict == "beats"]
    return wins


def verdict_section(results: dict[str, Any], full: dict[str, Any] | None, *, seed: int = 0) -> list[str]:
    """The "Verdicts" section: one answer per question of issue 20, each with the intervals it rests on."""
    tasks = results["meta"]["profile"]["tasks"]
    lines = ["## Verdicts", "",
             "Each answer rests on paired differences per held-out example (values averaged over the seeds both arms "
             "ran) with 95% percentile bootstrap intervals; \"not distinguishable\" means the interval contains 0, "
             "not that the arms are equal. Every arm is at its own learning rate on each task.", ""]

    lines += ["### Does activation mode match LoRA?", ""]
    for arm in activation_arms(results):
        comps = _vs(results, arm, BASELINE, tasks, seed)
        lines.append(f"{_label(results, arm)} at its own rate {compared_rate(results, arm):g} (maths, "
                     f"{_seeds(results, 'maths', arm)}) against LoRA at {compared_rate(results, BASELINE):g}: "
                     + _answer(comps, better="better than LoRA", worse="worse than LoRA",
                               tie="not distinguishable from LoRA"))
        lines += [""] + [_row(results, c, BASELINE) for c in comps]
        for other in _weight_arms(results):
            lines += [_row(results, c, other, prefix="against weight mode: ")
                      for c in _vs(results, arm, other, tasks, seed)]
        lines.append("")

    pairs = stand_in_pairs(results)
    for mode, title in (("activation", "Does the per-token circuit beat its per-token classical stand-in?"),
                        ("weight", "Does weight mode's circuit beat its classical stand-in?")):
        lines += [f"### {title}", ""]
        found = False
        for stand_in, twin in pairs:
            if _mode(results, twin) != mode:
                continue
            found = True
            comps = _vs(results, twin, stand_in, tasks, seed)
            params = {a: next((r["trainable_params"] - r.get("unused_params", 0) for r in main_runs(results, "maths", a)),
                              None) for a in (twin, stand_in)}
            lines.append(f"{_label(results, twin)} (lr {compared_rate(results, twin):g}, {params[twin] or 0:,} "
                         f"trainable parameters) against {_label(results, stand_in)} (lr "
                         f"{compared_rate(results, stand_in):g}, {params[stand_in] or 0:,} parameters that reach the "
                         "output): " + _answer(comps, better="yes, the circuit is better",
                                               worse="no, the stand-in is better",
                                               tie="not shown: not distinguishable"))
            lines += [""] + [_row(results, c, stand_in) for c in comps] + [""]
            lines += [f"The stand-in: {results['meta']['arms'][stand_in]['note']}.", ""]
        if not found:
            lines += ["Not measured in this study.", ""]

    if "dialogue" in tasks:
        lines += ["### Dialogue at its own learning rates", ""]
        swept = "dialogue" in (results["meta"]["profile"].get("sweep_tasks") or ["maths"])
        for arm in results["meta"]["profile"]["arms"]:
            if arm == BASELINE or not main_runs(results, "dialogue", arm):
                continue
            comps = _vs(results, arm, BASELINE, ["dialogue"], seed)
            lines.append(f"{_label(results, arm)} at {compared_rate(results, arm, 'dialogue'):g} against LoRA at "
                         f"{compared_rate(results, BASELINE, 'dialogue'):g} on dialogue"
                         + (" (rates chosen by a dialogue sweep; on maths they are "
                            f"{compared_rate(results, arm):g} and {compared_rate(results, BASELINE):g})"
                            if swept else " (rates chosen on maths)") + ": "
                         + _answer(comps, better="better than LoRA", worse="worse than LoRA",
                                   tie="not distinguishable from LoRA"))
            lines += [""] + [_row(results, c, BASELINE) for c in comps] + [""]

    lines += ["### The full profile (120 maths steps, 200 test problems)", ""]
    if full is None or not full["runs"]:
        lines += ["Not run.", ""]
    else:
        p = full["meta"]["profile"]
        lines.append(f"{p['maths_steps']} steps × batch {p['maths_batch']} × {p['maths']['seq_len']} tokens, "
                     f"{full['meta']['tasks'].get('maths', '')}; rates from the quick study. Runs: "
                     + ", ".join(f"{_label(full, a)} at {compared_rate(full, a):g} ({_seeds(full, 'maths', a)})"
                                 for a in p["arms"]) + ". Details in [full/REPORT.md](full/REPORT.md).")
        lines.append("")
        for arm in p["arms"]:
            if arm == BASELINE or not main_runs(full, "maths", arm):
                continue
            comps = _vs(full, arm, BASELINE, ["maths"], seed)
            lines.append(f"{_label(full, arm)} against LoRA: "
                         + _answer(comps, better="better than LoRA", worse="worse than LoRA",
                                   tie="not distinguishable from LoRA"))
            lines += [""] + [_row(full, c, BASELINE) for c in comps] + [""]
        for arm in activation_arms(full):
            for other in _weight_arms(full):
                lines += [_row(full, c, other) for c in _vs(full, arm, other, ["maths"], seed)]
        if full.get("not_run"):
            lines += ["", f"Planned but not run (time): {', '.join(f'`{k}`' for k in full['not_run'])}."]
        lines.append("")

    lines += ["### Does activation mode win anywhere?", ""]
    wins = activation_wins(results, full, seed=seed)
    if wins:
        lines += ["**Yes**: " + "; ".join(wins) + ". The learner's search space keeps activation mode, priced at its "
                  "measured cost.", ""]
    else:
        lines += ["**No.** In no comparison of this study is an activation-mode arm significantly better than LoRA "
                  "or than weight mode, on either metric or task it ran. The daemon's cold start stays in weight mode "
                  "(see below), and the learner offers activation mode only where the daemon's configuration asks "
                  "for it (`[recipe] qnn_mode = \"activation\"`), at its cost.", ""]
        beaten = [(twin, stand_in) for stand_in, twin in pairs if twin in activation_arms(results)
                  and any(c.verdict == "beats" for c in _vs(results, twin, stand_in, tasks, seed))]
        lines += [f"{_label(results, twin)} does beat its {_label(results, stand_in)} (above): the circuit is the "
                  "better per-token nonlinearity of the two at this size, which does not make activation mode a better "
                  "adapter than LoRA or weight mode." for twin, stand_in in beaten]
        lines += [""] if beaten else []
    return lines
