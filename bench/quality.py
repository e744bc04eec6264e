"""Quality study: QTHA against LoRA on the bundled SmolLM2-135M-Instruct, the baseline protocol of qtha-method.md.

Every arm gets the same base model, data, training seeds, steps, batch and schedule shape. The study first sweeps
the peak learning rate of LoRA, the QTHA arms and the per-token classical stand-in alike (first seed, on each task
of ``sweep_tasks``: maths, and dialogue for the arms that run there) and picks each arm's rate on each task by its
late training loss; then it trains each (arm, task, seed) at that rate, scores it on held-out data (maths: exact match
by greedy decoding and response loss; dialogue: response loss / perplexity), and writes ``results.json``, PNG
plots and ``REPORT.md`` with a verdict per question (activation mode against LoRA, each circuit against its classical
stand-in, dialogue at its own rates, the full profile from ``full/results.json``). The sweep also gives the
same-rate comparison at every rate of the grid.

    .venv/bin/python bench/quality.py --profile quick --resume   # the committed study, reports/quality/
    .venv/bin/python bench/quality.py --profile full --resume    # longer runs at the quick study's rates,
                                                                 # reports/quality/full/ (~10 min a run)
    .venv/bin/python bench/quality.py --report-only           # re-render REPORT.md and plots from results.json
    .venv/bin/python bench/quality.py --profile smoke --checkpoint DIR --out /tmp/q --json   # pipeline check

Raw results are saved after every run, so ``--resume`` continues a study that was cut short.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from bench._quality_arms import Arm, default_arms  # noqa: E402
from bench._quality_data import Task, dialogue_task, maths_task  # noqa: E402
from bench._quality_profiles import (  # noqa: E402
    PROFILES,
    Profile,
    RunSpec,
    plan_comparison,
    plan_sweep,
    rates_by_task,
    run_settings,
    runs_on,
)
from bench._quality_report import write_report  # noqa: E402
from bench._quality_summary import choose_learning_rates, selection_loss  # noqa: E402
from model import (  # noqa: E402
    EvalConfig,
    EvalProgress,
    FinetuneConfig,
    LoadedModel,
    TrainConfig,
    adapted_modules,
    finetune,
    load_checkpoint,
)
from model import evaluate as evaluate_model  # noqa: E402

RESULTS_FORMAT = 1
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "reports" / "quality"


def log(message: str) -> None:
    """Progress on stdout, flushed (the study runs for hours, often under nohup)."""
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def build_tasks(loaded: LoadedModel, profile: Profile) -> dict[str, Task]:
    """The profile's tasks, tokenized with the model's tokenizer."""
    builders: dict[str, Callable[[], Task]] = {
        "maths": lambda: maths_task(loaded.tokenizer, profile.maths, data_seed=profile.data_seed),
        "dialogue": lambda: dialogue_task(loaded.tokenizer, profile.dialogue, data_seed=profile.data_seed),
    }
    return {name: builders[name]() for name in profile.tasks}


def evaluate(model: nnx.Module, loaded: LoadedModel, task: Task, profile: Profile) -> dict[str, Any]:
    """Held-out measurements of one model on one task (per example, for paired comparisons), by
    ``model.evaluate``, the daemon's evaluator. Examples too long for ``seq_len`` (no loss) are left out."""
    config = EvalConfig(seq_len=task.seq_len, batch_size=profile.eval_batch, generate="answers",
                        generate_batch_size=profile.gen_batch, max_new_tokens=profile.maths.max_new_tokens)
    ended = {"start": time.perf_counter()}  # when each stage's last batch finished

    def progress(p: EvalProgress) -> None:
        ended[p.stage] = time.perf_counter()

    result = evaluate_model(model, loaded.tokenizer, task.heldout, config, progress=progress)
    scored = [r for r in result.examples if r.tokens]
    out: dict[str, Any] = {
        "heldout_loss": result.loss,
        "heldout_ppl": result.perplexity,
        "example_nll": [r.nll for r in scored],
        "example_tokens": [float(r.tokens) for r in scored],
        "loss_eval_s": ended.get("loss", ended["start"]) - ended["start"],
    }
    log(f"    held-out loss {result.loss:.4f} on {len(scored)} examples ({out['loss_eval_s']:.0f} s)")
    graded = [(e, r) for e, r in zip(task.heldout, result.examples, strict=True) if r.correct is not None]
    if graded:
        out.update({
            "exact_match": result.accuracy,
            "example_correct": [float(r.correct) for _, r in graded],
            "samples": [{"prompt": e.prompt, "completion": r.completion, "answer": e.answer} for e, r in graded[:3]],
            "generate_s": ended["generate"] - ended.get("loss", ended["start"]),
        })
        log(f"    exact match {result.accuracy:.3f} on {len(graded)} problems ({out['generate_s']:.0f} s)")
    return out


def run_one(loaded: LoadedModel, task: Task, arm: Arm, spec: RunSpec, profile: Profile) -> dict[str, Any]:
    """Inject ``arm``'s adapter into a copy of the base model, train it, evaluate it; the run's raw record."""
    steps = profile.maths_steps if task.name == "maths" else profile.dialogue_steps
    batch = profile.maths_batch if task.name == "maths" else profile.dialogue_batch
    config = FinetuneConfig(
        adapter=arm.config,
        train=TrainConfig(steps=steps, learning_rate=spec.learning_rate, warmup_steps=profile.warmup_steps,
                          seed=spec.seed),
        batch_size=batch,
    )
    every = max(1, steps // 10)

    def progress(p: Any) -> None:
        if p.step == 1 or p.step % every == 0 or p.step == p.total_steps:
            log(f"  {spec.key} step {p.step}/{p.total_steps} loss {p.loss:.4f} lr {p.learning_rate:.2e} "
                f"{p.elapsed_s:.0f}s")

    load_start = os.getloadavg()[0]
    copy = dataclasses.replace(loaded, model=nnx.clone(loaded.model))  # the base stays clean for the next run
    run = finetune(copy, task.train, config, qnn_factory=arm.qnn_factory(spec.seed), progress=progress)
    result, used = run.train, run.adapter
    step_times = list(result.step_times_s)
    log(f"  {spec.key} trained: median {statistics.median(step_times):.2f} s/step, compile "
        f"{result.compile_time_s:.1f} s; evaluating")
    record: dict[str, Any] = {
        "key": spec.key,
        "task": task.name,
        "arm": arm.name,
        "seed": spec.seed,
        "learning_rate": spec.learning_rate,
        "probe": spec.sweep,  # a sweep run (it is also a comparison run when its rate is the one chosen)
        "steps": steps,
        "batch": batch,
        "adapter_config": repr(used),
        "bond_dim": getattr(used, "bond_dim", None),
        "trainable_params": run.params.total,
        # A per-token stand-in reads fewer entries of each module's angle vector than the adapter counts.
        "unused_params": arm.unused_weights() * len(adapted_modules(copy.model)),
        "train_losses": [float(x) for x in result.losses],
        "skipped_nonfinite": result.skipped_nonfinite,
        "compile_s": result.compile_time_s,
        "step_times_s": step_times,
        "median_step_s": statistics.median(step_times),
        "train_wall_s": result.wall_time_s,
        "load_avg": [load_start, os.getloadavg()[0]],  # the machine's 1-minute load at the start and end of training
    }
    record.update(evaluate(copy.model, loaded, task, profile))
    return record


def machine_info() -> dict[str, Any]:
    """Where the study ran (its timings depend on it)."""
    return {
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
    }


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Atomic write of the raw results (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_previous(out: Path, profile: Profile, checkpoint: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Finished runs and base-model results of earlier or concurrent processes of the same study in ``out``.

    Reads ``results.json`` and every ``results.*.json`` part. A run is reused when the settings that define a run
    (``Profile.run_settings``: sizes, steps, schedule, data seed, evaluation) and the checkpoint are the same; which
    arms, seeds or probes a study plans does not change a run's numbers.

    Returns:
        Runs by key, and base-model results by task.
    """
    runs: dict[str, dict[str, Any]] = {}
    base: dict[str, Any] = {}
    for path in sorted(out.glob("results*.json")):
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # a part being written right now; it is read again before the next run
        meta = old.get("meta", {})
        if meta.get("checkpoint") != checkpoint or run_settings(meta.get("profile", {})) != profile.run_settings():
            log(f"--resume: {path.name} holds a different study (run settings or checkpoint differ); not reused")
            continue
        runs.update({r["key"]: r for r in old.get("runs", [])})
        base.update(old.get("base", {}))
    return runs, base


def rates_from(path: Path, arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """The learning rates another study chose (task → arm → rate), for a profile that does not sweep its own.

    A study still running has recorded no choice yet: the rates are then chosen from its finished sweep runs, by
    the same rule, once every rate of the grid has run for each of ``arms``.

    Raises:
        SystemExit: the file is unreadable, or its sweep has not finished for one of ``arms``.
    """
    try:
        other = json.loads(path.read_text(encoding="utf-8"))
        meta = other["meta"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise SystemExit(f"rates_from {path}: cannot read it as a results file ({exc})") from exc
    swept = meta.get("profile", {}).get("sweep_tasks") or ["maths"]
    chosen = rates_by_task(meta.get("learning_rates", {}), swept[0])
    if not chosen:
        p = meta["profile"]
        for task in swept:
            choices = choose_learning_rates(other["runs"], p["sweep_arms"], p["lr_grid"], task=task, seed=p["seeds"][0])
            chosen[task] = {a: c.learning_rate for a, c in choices.items() if len(c.scores) == len(p["lr_grid"])}
    missing = [a for a in arms if a not in chosen.get(swept[0], {})]
    if missing:
        raise SystemExit(f"rates_from {path}: its study has not chosen a rate for {missing} yet (let its sweep finish)")
    return chosen


def load_reference(path: Path, profile: Profile, checkpoint: str) -> dict[str, Any]:
    """An earlier study's runs (their measured numbers only), checked to be the same experiment as this study's.

    Raises:
        SystemExit: the file is unreadable, or was made with other run settings or another checkpoint (its runs
            would not be the same experiment, so comparing them says nothing about reproducibility).
    """
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--reference {path}: cannot read it as a results file ({exc})") from exc
    meta = old.get("meta", {})
    if meta.get("checkpoint") != checkpoint or run_settings(meta.get("profile", {})) != profile.run_settings():
        raise SystemExit(f"--reference {path}: made with other run settings or another checkpoint than this study; "
                         "its runs are not repeats of these")
    keep = ("key", "heldout_loss", "exact_match", "train_losses")
    return {"path": str(path), "started_utc": meta.get("started_utc"),
            "runs": [{k: r[k] for k in keep if k in r} for r in old.get("runs", [])]}


def study(profile: Profile, *, checkpoint: str, out: Path, resume: bool, command: str, part: str | None = None,
          reverse: bool = False, merge_only: bool = False, reference: Path | None = None) -> dict[str, Any]:
    """Runs the whole study, saving the results after every run, and returns them.

    Args:
        profile: the study's sizes.
        checkpoint: the base model.
        out: where ``results.json`` (or ``results.<part>.json``) goes.
        resume: reuse finished runs of the same study found in ``out`` (re-read before every run, so processes
            working on one study in parallel, each with its own ``part`` and one with ``reverse``, share the work).
        command: the command line that reproduces the study (recorded in the report).
        part: write ``results.<part>.json`` instead of ``results.json``.
        reverse: go through the plan from its end.
        merge_only: with ``resume``, train nothing: collect the finished runs and list the others as not run.
        reference: an earlier study's ``results.json``; the runs it shares with this one are recorded beside the
            results, and the report shows how closely they reproduce.
    """
    started = time.perf_counter()
    earlier = load_reference(reference, profile, checkpoint) if reference is not None else None  # fail fast
    # The seeds of one arm lower to the same program: a persistent compilation cache compiles it once.
    jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "qtha" / "jax-quality"))
    log(f"profile {profile.name}: loading {checkpoint}")
    loaded = load_checkpoint(checkpoint)
    tasks = build_tasks(loaded, profile)
    for task in tasks.values():
        log(f"task {task.name}: {task.describe}")
    arms = {a.name: a for a in default_arms(activation_qubits=profile.activation_qubits,
                                            activation_layers=profile.activation_layers)}
    unknown = sorted(set(profile.arms) - set(arms))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {sorted(arms)}")
    path = out / (f"results.{part}.json" if part else "results.json")
    done, done_base = load_previous(out, profile, checkpoint) if resume else ({}, {})
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "meta": {
            "profile": profile.to_json(),
            "checkpoint": checkpoint,
            "command": command,
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine_at_start": machine_info(),
            "tasks": {name: t.describe for name, t in tasks.items()},
            "arms": {name: {"label": a.label, "note": a.note, "cheap": a.cheap, "classical": a.classical,
                            "twin": a.twin}
                     for name, a in arms.items() if name in profile.arms},
        },
        "base": {},
        "runs": [],
        "failed": [],
        "not_run": [],
    }
    for name, task in tasks.items():
        if name in done_base:
            results["base"][name] = done_base[name]
            continue
        log(f"base model on {name} (no adapter)")
        results["base"][name] = evaluate(loaded.model, loaded, task, profile)
        log(f"  base {name}: held-out loss {results['base'][name]['heldout_loss']:.4f}"
            + (f", exact match {results['base'][name]['exact_match']:.3f}" if "exact_match" in results["base"][name]
               else ""))
    costly = {name for name, a in arms.items() if not a.cheap}

    def execute(specs: list[RunSpec], stage: str) -> None:
        """Trains (or reuses) each planned run not yet in the results, saving after every run."""
        nonlocal done
        order = list(enumerate(specs, start=1))
        for i, spec in reversed(order) if reverse else order:
            if any(r["key"] == spec.key for r in results["runs"]):
                continue  # the sweep already made this comparison run
            if resume:
                done = {**done, **load_previous(out, profile, checkpoint)[0]}
            tag = f"{stage} [{i}/{len(specs)}] {spec.key}"
            if spec.key in done:
                results["runs"].append(done[spec.key])
                log(f"{tag}: reused from an earlier run")
                continue
            if merge_only:
                results["not_run"].append(spec.key)
                log(f"{tag}: not run (--merge-only)")
                continue
            log(f"{tag} ({arms[spec.arm].label}); study time so far {(time.perf_counter() - started) / 60:.1f} min")
            try:
                record = run_one(loaded, tasks[spec.task], arms[spec.arm], spec, profile)
            except (ValueError, RuntimeError, MemoryError) as exc:  # a broken arm is a finding; the others go on
                log(f"  {spec.key} FAILED: {type(exc).__name__}: {exc}")
                results["failed"].append({"key": spec.key, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                save_results(path, results)
                continue
            results["runs"].append(record)
            log(f"  {spec.key}: params {record['trainable_params']}, late train loss "
                f"{selection_loss(record['train_losses']):.4f}, held-out loss {record['heldout_loss']:.4f}"
                + (f", exact match {record['exact_match']:.3f}" if "exact_match" in record else ""))
            save_results(path, results)

    sweep = plan_sweep(profile, costly)
    execute(sweep, "sweep")
    if profile.rates_from:
        chosen = rates_from(Path(os.path.normpath(out / profile.rates_from)), profile.arms)
        results["meta"]["rates_from"] = profile.rates_from
        log(f"learning rates from {profile.rates_from}: {chosen}")
    else:
        chosen = {}
        for task in profile.sweep_tasks if sweep else ():
            swept = [arm for arm in profile.sweep_arms if runs_on(profile, arm, task, costly)]
            choices = choose_learning_rates(results["runs"], swept, profile.lr_grid, task=task, seed=profile.seeds[0])
            chosen[task] = {arm: c.learning_rate for arm, c in choices.items()}
            for arm, c in choices.items():
                log(f"learning rate of {arm} on {task}: {c.learning_rate:g}"
                    f"{' (at the edge of the grid)' if c.at_edge else ''} (late training loss by rate: "
                    + ", ".join(f"{rate:g} → {loss:.4f}" for rate, loss in c.scores) + ")")
    results["meta"]["learning_rates"] = chosen
    plan = sweep + plan_comparison(profile, costly, chosen)
    execute(plan[len(sweep):], "comparison")
    if earlier is not None:
        made = {r["key"] for r in results["runs"]}
        results["reference"] = {**earlier, "runs": [r for r in earlier["runs"] if r["key"] in made]}
    rank = {spec.key: i for i, spec in enumerate(plan)}
    results["runs"].sort(key=lambda r: rank.get(r["key"], len(rank)))
    results["meta"]["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["meta"]["study_wall_s"] = time.perf_counter() - started
    results["meta"]["machine_at_end"] = machine_info()
    save_results(path, results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                        help="quick (default: the committed study), full (longer runs at quick's rates) or smoke")
    parser.add_argument("--checkpoint", default="bundled:smollm2", help="base model (default: bundled SmolLM2)")
    parser.add_argument("--out", type=Path,
                        help="report folder (default: reports/quality, reports/quality/full for the full profile)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the profile's training seeds")
    parser.add_argument("--maths-steps", type=int, help="override the profile's maths steps")
    parser.add_argument("--dialogue-steps", type=int, help="override the profile's dialogue steps")
    parser.add_argument("--arms", nargs="+", help="override the profile's arms")
    parser.add_argument("--tasks", nargs="+", choices=("maths", "dialogue"), help="override the profile's tasks")
    parser.add_argument("--lr-grid", type=float, nargs="*",
                        help="override the swept learning rates (none: no sweep, every arm at the default rate)")
    parser.add_argument("--sweep-arms", nargs="+", help="override the arms whose learning rate is swept")
    parser.add_argument("--sweep-tasks", nargs="+", choices=("maths", "dialogue"),
                        help="override the tasks that choose their own learning rates")
    parser.add_argument("--reference", type=Path,
                        help="an earlier results.json of the same settings: report how its shared runs reproduce")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs of the same study in --out (results.json and results.*.json)")
    parser.add_argument("--part", help="write results.PART.json (a process sharing a study with others)")
    parser.add_argument("--reverse", action="store_true", help="run the plan from its end (with --resume --part)")
    parser.add_argument("--merge-only", action="store_true",
                        help="with --resume: train nothing, merge the finished runs and list the missing ones")
    parser.add_argument("--report-only", action="store_true", help="re-render the report from --out/results.json")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is None:
        args.out = DEFAULT_OUT / "full" if args.profile == "full" else DEFAULT_OUT
    path = args.out / "results.json"
    if args.report_only:
        results = json.loads(path.read_text(encoding="utf-8"))
    else:
        profile = PROFILES[args.profile].with_overrides(
            seeds=tuple(args.seeds) if args.seeds else None, maths_steps=args.maths_steps,
            dialogue_steps=args.dialogue_steps, arms=tuple(args.arms) if args.arms else None,
            tasks=tuple(args.tasks) if args.tasks else None,
            lr_grid=tuple(args.lr_grid) if args.lr_grid is not None else None,
            sweep_arms=tuple(args.sweep_arms) if args.sweep_arms else None,
            sweep_tasks=tuple(args.sweep_tasks) if args.sweep_tasks else None)
        # Resuming or sharing the work does not change a run's numbers: the recorded command leaves those flags out.
        given = [a for a in (argv if argv is not None else sys.argv[1:])
                 if a not in ("--resume", "--reverse", "--merge-only")]
        for flag in ("--part", "--out"):  # where results go does not change them either
            given = [a for i, a in enumerate(given) if a != flag and (i == 0 or given[i - 1] != flag)]
        command = " ".join(["bench/quality.py", *given])
        results = study(profile, checkpoint=args.checkpoint, out=args.out, resume=args.resume, command=command,
                        part=args.part, reverse=args.reverse, merge_only=args.merge_only, reference=args.reference)
    full_path = args.out / "full" / "results.json"
    full = json.loads(full_path.read_text(encoding="utf-8")) if full_path.exists() else None
    report = write_report(results, args.out, full=full)
    log(f"report written: {report}")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
