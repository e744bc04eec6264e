"""Self-improvement study (issue 17): accuracy per iteration of three arms on SmolLM2-135M-Instruct.

Sampling appends ``model.MARKED_ANSWER_INSTRUCTION`` to the prompt; training pairs keep the bare question.

(a) supervised: every iteration fine-tunes (continuing) on fresh generator problems *with* their worked solutions.
(b) self-improvement from the base, no solutions: every iteration the current model samples k answers per generator
    question (solution removed), the marked-answer verifier keeps the correct ones (the generator's answer is the
    known answer), and a fresh adapter is trained from the base (ReST-EM) on them plus a replay share.
(c) supervised then self-improvement: iteration 1 is (a)'s; later iterations sample on *differently phrased*
    prompts (bench/_self_improve_data.py "alternate") and continue the adapter on the verified samples.

Evaluated with ``model.evaluate`` (greedy, the daemon's evaluator) on the generator's held-out test split and on a
hand-written, independently phrased set ("independent") that no arm trains on. Every step's per-example results
are written to ``<out>/runs/`` as it finishes, so a rerun resumes where it stopped; ``--report`` (also run at the
end) writes REPORT-data.md and the plots from whatever has finished.

    PYTHONPATH=. python bench/self_improve.py --n-heldout 500 --n-independent 200 --iterations 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._self_improve_data import word_problems  # noqa: E402
from model import (  # noqa: E402
    MARKED_ANSWER_INSTRUCTION,
    WORKED_EXAMPLES,
    ChatExample,
    DecodeEngine,
    EngineConfig,
    EvalConfig,
    EvalExample,
    FinetuneConfig,
    KeptSample,
    PoolPrompt,
    TrainConfig,
    build_training_set,
    disjoint_pool,
    evaluate,
    finetune,
    generate_math_problems,
    is_mergeable,
    load_adapter,
    load_checkpoint,
    merge_adapters,
    sample_pool,
    sampling_capacity,
    tokenize_examples,
    verify_round,
)
from model.adapters import LoraConfig  # noqa: E402
from model.data import encode_example  # noqa: E402

ARMS = ("a", "b", "c")
ARM_NAMES = {"a": "(a) supervised on generator solutions", "b": "(b) self-improvement from the base, no solutions",
             "c": "(c) supervised, then self-improvement on differently phrased prompts"}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sets(args: argparse.Namespace) -> dict[str, list[EvalExample]]:
    held = generate_math_problems(args.n_heldout, split="test", seed=1234, steps=(1, 2))
    ind = word_problems("independent", args.n_independent, seed=1234)
    return {
        "heldout": [EvalExample.from_math(p) for p in held],
        "independent": [EvalExample(f"ind{p.steps}/{p.key}", p.question, f"The answer is {p.answer}.",
                                    f"steps{p.steps}", p.answer) for p in ind],
    }


def _model_with(base: Any, adapter: Path | None) -> Any:
    from flax import nnx

    model = nnx.clone(base.model)
    if adapter is not None:
        load_adapter(model, adapter, base_fingerprint=base.fingerprint)
    return model


def _evaluate(base: Any, adapter: Path | None, sets: dict[str, list[EvalExample]], args: argparse.Namespace) -> dict:
    model = _model_with(base, adapter)
    model = merge_adapters(model) if adapter is not None and is_mergeable(model) else model
    out: dict[str, Any] = {}
    for name, examples in sets.items():
        t0 = time.process_time()
        result = evaluate(model, base.tokenizer, examples, EvalConfig(
            seq_len=256, batch_size=32, generate="answers", generate_batch_size=args.eval_batch, loss=False,
            max_new_tokens=args.max_new_tokens))
        out[name] = [bool(r.correct) for r in result.examples]
        out[f"{name}_cpu_s"] = time.process_time() - t0
        _log(f"  eval {name}: {np.mean(out[name]):.3f} on {len(examples)} ({out[f'{name}_cpu_s']:.0f} CPU-s)")
    return out


def _train(base: Any, examples: list[ChatExample], warm: Path | None, out: Path, args: argparse.Namespace,
           seed: int) -> dict:
    import dataclasses as dc

    loaded = dc.replace(base, model=_model_with(base, None))
    # Rows are padded to seq_len: the longest row rounded up to 32 (at most 256) trains the same tokens as 256,
    # in about half the time for these ~100-token problems.
    longest = max(len(encode_example(base.tokenizer, e)[0]) for e in examples)
    data = tokenize_examples(base.tokenizer, examples, seq_len=min(256, -(-longest // 32) * 32))
    batch = min(args.batch_size, len(examples))
    # --max-epochs caps the passes over a small verified set (60 steps on 46 rows is ten passes: it memorises)
    steps = args.steps
    if args.max_epochs is not None:
        steps = max(1, min(steps, -(-int(args.max_epochs * len(examples)) // batch)))
    config = FinetuneConfig(LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj")),
                            TrainConfig(steps=steps, learning_rate=args.lr, warmup_steps=min(5, steps // 4),
                                        seed=seed), batch_size=batch)
    t0, w0 = time.process_time(), time.monotonic()
    run = finetune(loaded, data, config, warm_start=warm, out=out)
    losses = run.train.losses
    _log(f"  trained {steps} steps on {len(examples)} rows, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
         f"warm={run.warm_start}")
    return {"train_cpu_s": time.process_time() - t0, "train_wall_s": time.monotonic() - w0, "rows": len(examples),
            "steps": steps,
            "loss_first": float(losses[0]), "loss_last": float(losses[-1])}


def _sample(base: Any, adapter: Path | None, pool: list[PoolPrompt], args: argparse.Namespace, seed: int) -> tuple[list[KeptSample], dict]:
    model = _model_with(base, adapter)
    model = merge_adapters(model) if adapter is not None and is_mergeable(model) else model
    tokens, shown = args.sample_tokens or args.max_new_tokens, WORKED_EXAMPLES[:args.worked_examples]
    capacity = sampling_capacity(base.tokenizer, pool, max_tokens=tokens, instruction=MARKED_ANSWER_INSTRUCTION,
                                 worked_examples=shown)
    engine = DecodeEngine(model, base.tokenizer, EngineConfig(max_slots=args.slots, capacity=capacity, max_queue=64))
    engine.start()
    t0, w0 = time.process_time(), time.monotonic()
    try:
        samples = sample_pool(engine, pool, k=args.k, temperature=args.temperature, top_p=0.95, max_tokens=tokens,
                              seed=seed, instruction=MARKED_ANSWER_INSTRUCTION, worked_examples=shown,
                              progress=lambda d, t: _log(f"  sampled {d}/{t} prompts") if d % 32 == 0 else None)
    finally:
        engine.stop()
    result = verify_round(samples, threshold=args.agreement, max_paths=args.max_paths)
    kept = list(result.kept)
    stats = result.stats.to_dict() | {"sample_cpu_s": time.process_time() - t0, "sample_wall_s": time.monotonic() - w0,
                                      "reasons": result.reasons,
                                      "tokens": sum(s.completion_tokens for s in samples),
                                      # the recipe the round ran, so arms and reruns with other settings stay apart
                                      "k": args.k, "temperature": args.temperature,
                                      "worked_examples": args.worked_examples, "agreement": args.agreement,
                                      "replay_share": args.replay_share, "max_epochs": args.max_epochs,
                                      "replay_supervised": args.replay_supervised}
    _log(f"  verified {result.stats.verified}/{result.stats.drawn}, used {result.stats.used}, pass@k "
         f"{result.stats.pass_at_k:.2f}, distinct-3 {result.stats.distinct3:.2f} ({stats['sample_cpu_s']:.0f} CPU-s)")
    return kept, stats


def _pool(family: str, n: int, seed: int, held: list[str]) -> list[PoolPrompt]:
    if family == "generator":
        items = [(p.key, p.question, p.answer) for p in generate_math_problems(n, split="train", seed=seed,
                                                                               steps=(1, 2))]
    else:
        items = [(f"alt/{p.key}", p.question, p.answer) for p in word_problems("alternate", n, seed=seed)]
    return disjoint_pool([PoolPrompt(i, q, a) for i, q, a in items], held)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs, work = out / "runs", out / "work"
    base = load_checkpoint(args.checkpoint)
    sets = _sets(args)
    held_text = [e.prompt for s in sets.values() for e in s]
    for seed in args.seeds:
        path = runs / f"seed{seed}" / "base.json"
        if not path.exists():
            _log(f"seed {seed}: base model")
            _write(path, _evaluate(base, None, sets, args))
        for arm in args.arms:
            replay: list[KeptSample] = []
            if arm == "c" and args.replay_supervised:
                # (c)'s earlier verified data includes the reference solutions its first iteration trained on
                replay.extend(KeptSample(p.key, p.question, p.solution, "reference-solution") for p in
                              generate_math_problems(args.pool, split="train", seed=10_000 * seed + 1, steps=(1, 2)))
            for it in range(1, args.iterations + 1):
                path = runs / f"seed{seed}" / arm / f"iter{it}.json"
                adapter = work / f"seed{seed}" / arm / f"iter{it}"
                prev = work / f"seed{seed}" / arm / f"iter{it - 1}" if it > 1 else None
                if arm == "c" and it == 1:
                    prev = None
                if path.exists():
                    replay.extend(KeptSample(**k) for k in json.loads(path.read_text()).get("kept", []))
                    continue
                _log(f"seed {seed} arm {arm} iteration {it}")
                data_seed = 10_000 * seed + 100 * it + ARMS.index(arm)
                record: dict[str, Any] = {"arm": arm, "iteration": it, "seed": seed}
                shared = runs / f"seed{seed}" / "a" / "iter1.json"
                if arm == "c" and it == 1 and shared.exists() and (work / f"seed{seed}" / "a" / "iter1").exists():
                    # (c) starts from (a)'s first iteration: the same supervised adapter, not trained twice
                    shutil.copytree(work / f"seed{seed}" / "a" / "iter1", adapter, dirs_exist_ok=True)
                    _write(path, json.loads(shared.read_text()) | {"arm": "c", "copied_from": "a/iter1"})
                    continue
                if arm == "a" or (arm == "c" and it == 1):
                    problems = generate_math_problems(args.pool, split="train", seed=10_000 * seed + it, steps=(1, 2))
                    record |= _train(base, [p.as_example() for p in problems], prev, adapter, args, seed)
                else:
                    family = "generator" if arm == "b" else "alternate"
                    pool = _pool(family, args.pool, data_seed, held_text)
                    sampler = prev if prev is not None and prev.exists() else None
                    kept, stats = _sample(base, sampler, pool, args, data_seed)
                    record["si"] = stats | {"sample_tokens": args.sample_tokens or args.max_new_tokens}
                    record["kept"] = [k.to_dict() for k in kept]
                    mixed = build_training_set(kept, replay, replay_share=args.replay_share, seed=data_seed)
                    replay.extend(kept)
                    if not mixed:
                        _log("  nothing verified: the model stays as it was")
                        record["train_cpu_s"] = 0.0
                        if sampler is not None:
                            shutil.copytree(sampler, adapter, dirs_exist_ok=True)
                    else:
                        warm = None if arm == "b" else prev  # (b) from the base (ReST-EM); (c) continues
                        record |= _train(base, [k.as_example() for k in mixed], warm,
                                         work / f"seed{seed}" / arm / f"iter{it}", args, seed)
                record |= _evaluate(base, adapter if adapter.exists() else None, sets, args)
                _write(path, record)
    report(args)


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap of mean(a) - mean(b) over the same examples: (difference, 2.5%, 97.5%)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return float(a.mean() - b.mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def report(args: argparse.Namespace) -> None:
    """Tables and plots from the finished steps (REPORT-data.md, accuracy.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, runs = Path(args.out), Path(args.out) / "runs"
    seeds = sorted(int(p.name.removeprefix("seed")) for p in runs.glob("seed*"))
    lines = ["# Self-improvement study: measured numbers (generated by bench/self_improve.py --report)", ""]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for si, name in enumerate(("heldout", "independent")):
        lines += [f"## {name}", "", "| seed | arm | iter | accuracy | vs base (95% CI) | vs (a) same iter (95% CI) |"
                  " train CPU-s | sample CPU-s | k, T, worked | drawn | verified | used | pass@k | distinct-3 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for seed in seeds:
            base_path = runs / f"seed{seed}" / "base.json"
            if not base_path.exists():
                continue
            base = np.array(json.loads(base_path.read_text())[name], dtype=float)
            lines.append(f"| {seed} | base | 0 | {base.mean():.3f} | | | | | | | | | | |")
            for arm in ARMS:
                xs, ys = [0], [base.mean()]
                for it in range(1, 20):
                    p = runs / f"seed{seed}" / arm / f"iter{it}.json"
                    if not p.exists():
                        break
                    r = json.loads(p.read_text())
                    acc = np.array(r[name], dtype=float)
                    d = _bootstrap(acc, base)
                    pa = runs / f"seed{seed}" / "a" / f"iter{it}.json"
                    va = ""
                    if arm != "a" and pa.exists():
                        da = _bootstrap(acc, np.array(json.loads(pa.read_text())[name], dtype=float))
                        va = f"{100 * da[0]:+.1f} [{100 * da[1]:+.1f}, {100 * da[2]:+.1f}]"
                    si_ = r.get("si", {})
                    recipe = (f"{si_['k']}, {si_['temperature']}, {si_['worked_examples']}" if "k" in si_
                              else "8, 0.8, 0" if si_ else "")  # rounds run before the settings were recorded
                    lines.append(
                        f"| {seed} | {arm} | {it} | {acc.mean():.3f} | {100 * d[0]:+.1f} [{100 * d[1]:+.1f}, "
                        f"{100 * d[2]:+.1f}] | {va} | {r.get('train_cpu_s', 0):.0f} | {si_.get('sample_cpu_s', 0):.0f} |"
                        f" {recipe} | {si_.get('drawn', '')} | {si_.get('verified', '')} | {si_.get('used', '')} | "
                        f"{si_.get('pass_at_k', float('nan')):.2f} | {si_.get('distinct3', float('nan')):.2f} |")
                    xs.append(it)
                    ys.append(acc.mean())
                if len(xs) > 1:
                    axes[si].plot(xs, ys, marker="o", label=f"{ARM_NAMES[arm][:3]} seed {seed}")
        lines.append("")
        axes[si].set_title(f"greedy exact match: {name}")
        axes[si].set_xlabel("iteration (0 = base)")
        axes[si].set_ylabel("accuracy")
        axes[si].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    (out / "REPORT-data.md").write_text("\n".join(lines) + "\n")
    _log(f"report data written to {out / 'REPORT-data.md'} and {out / 'accuracy.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="bundled:smollm2")
    ap.add_argument("--out", default="reports/self-improvement")
    ap.add_argument("--n-heldout", type=int, default=500)
    ap.add_argument("--n-independent", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--pool", type=int, default=128, help="prompts (or supervised problems) per iteration")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--agreement", type=float, default=0.5)
    ap.add_argument("--max-paths", type=int, default=4)
    ap.add_argument("--replay-share", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-epochs", type=float, default=None,
                    help="cap the training steps at this many passes over the round's rows (default: --steps)")
    ap.add_argument("--replay-supervised", action="store_true",
                    help="(c) replays the reference solutions of its supervised first iteration")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sample-tokens", type=int, default=0, help="sampling budget (0: --max-new-tokens)")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--worked-examples", type=int, default=0, choices=range(len(WORKED_EXAMPLES) + 1),
                    help="hand-written worked examples shown before each sampled prompt (STaR's few-shot prompt)")
    ap.add_argument("--report", action="store_true", help="only write the report from finished steps")
    args = ap.parse_args()
    if args.report:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
