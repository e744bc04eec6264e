"""Fine-tuning cost on SmolLM2-135M (bundled): step time, compile time and peak memory of LoRA r=8 and QTHA
(weight and activation modes) on q_proj + v_proj, same batch and sequence length.

Each arm runs in its own process, so its peak RSS is its own. Prints a table with the QTHA/LoRA step-time ratio
(target ≤ 1.5) and trainable-parameter ratio (target ≤ 0.24); ``--json`` for machines.

    .venv/bin/python bench/finetune.py                                  # all three arms
    .venv/bin/python bench/finetune.py --arms lora qtha-weight --steps 20 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = ("lora", "qtha-weight", "qtha-activation")


@dataclass(frozen=True)
class Row:
    arm: str
    trainable_params: int
    steps: int
    compile_s: float
    step_s: float
    peak_rss_mb: float
    first_loss: float
    last_loss: float


def _adapter(arm: str):
    from model import LoraConfig, QthaAdapterConfig

    if arm == "lora":
        return LoraConfig(rank=8, alpha=16.0)
    return QthaAdapterConfig(qnn_mode="weight" if arm == "qtha-weight" else "activation")


def run_arm(arm: str, *, steps: int, batch: int, seq_len: int, seed: int) -> Row:
    """Trains one arm in this process and measures it."""
    from model import (
        FinetuneConfig,
        TrainConfig,
        finetune,
        generate_math_problems,
        load_checkpoint,
        tokenize_examples,
    )

    loaded = load_checkpoint("bundled:smollm2")
    problems = generate_math_problems(max(64, batch * (steps + 1)), split="train", seed=seed)
    data = tokenize_examples(loaded.tokenizer, [p.as_example() for p in problems], seq_len=seq_len)
    train = TrainConfig(steps=steps, learning_rate=1e-3, warmup_steps=0, remat=True, seed=seed)
    run = finetune(loaded, data, FinetuneConfig(_adapter(arm), train, batch_size=batch))
    result = run.train
    # The first update after compilation still warms caches; the median is the steady state.
    return Row(
        arm=arm,
        trainable_params=run.params.total,
        steps=result.steps_done,
        compile_s=result.compile_time_s,
        step_s=statistics.median(result.step_times_s),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        first_loss=result.losses[0],
        last_loss=result.losses[-1],
    )


def _in_subprocess(arm: str, args: argparse.Namespace) -> Row:
    cmd = [sys.executable, __file__, "--arm-worker", arm, "--batch", str(args.batch), "--seq-len",
           str(args.seq_len), "--seed", str(args.seed), "--steps",
           str(args.activation_steps if arm == "qtha-activation" else args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return Row(**json.loads(out.stdout.strip().splitlines()[-1]))


def _table(rows: list[Row]) -> str:
    lines = [f"{'arm':<16} {'params':>9} {'steps':>5} {'compile s':>9} {'step s':>8} {'peak RSS MB':>11} "
             f"{'loss first→last':>17}"]
    for r in rows:
        lines.append(f"{r.arm:<16} {r.trainable_params:>9,} {r.steps:>5} {r.compile_s:>9.1f} {r.step_s:>8.3f} "
                     f"{r.peak_rss_mb:>11.0f} {r.first_loss:>8.3f}→{r.last_loss:<8.3f}")
    return "\n".join(lines)


def _ratios(rows: list[Row]) -> dict[str, dict[str, float]]:
    by_arm = {r.arm: r for r in rows}
    lora = by_arm.get("lora")
    if lora is None:
        return {}
    return {
        r.arm: {"step_time_ratio": r.step_s / lora.step_s, "param_ratio": r.trainable_params / lora.trainable_params}
        for r in rows if r.arm != "lora"
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--steps", type=int, default=12, help="updates for LoRA and QTHA weight mode")
    parser.add_argument("--activation-steps", type=int, default=3, help="updates for QTHA activation mode")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--arm-worker", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm_worker:
        row = run_arm(args.arm_worker, steps=args.steps, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
        print(json.dumps(asdict(row)))
        return 0
    rows = [_in_subprocess(arm, args) for arm in args.arms]
    ratios = _ratios(rows)
    if args.json:
        print(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rows], "vs_lora": ratios}, indent=1))
        return 0
    print(f"SmolLM2-135M, q_proj+v_proj, batch {args.batch}×{args.seq_len}, float32, per-block remat")
    print(_table(rows))
    for arm, r in ratios.items():
        print(f"{arm}: step time ×{r['step_time_ratio']:.2f} of LoRA (target ≤ 1.5), "
              f"trainable parameters ×{r['param_ratio']:.3f} of LoRA (target ≤ 0.24)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
