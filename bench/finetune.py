"""Fine-tuning cost on SmolLM2-135M (bundled): step time, compile time and peak memory of LoRA r=8 and QTHA
(weight and activation modes) on q_proj + v_proj, same batch and sequence length.

Each arm runs in its own process, so its peak RSS is its own. Prints a table with the QTHA/LoRA step-time ratio
(target ≤ 1.5) and trainable-parameter ratio (target ≤ 0.24), activation mode's step against weight mode's
(target ≤ 3×), and a roofline line for activation mode: the circuit FLOPs of a step (every adapted module
simulates one circuit per token, forward and adjoint backward, counted as ``bench/quantum_sim.py`` counts them;
per-block remat keeps the circuits' final states, so no circuit runs twice), the rate the step achieved on them,
the float32 GEMM rate measured in the same run, and the step time that rate would allow (weight mode's step plus
the circuit FLOPs at the GEMM rate). ``--json`` for machines.

    .venv/bin/python bench/finetune.py                                  # all three arms
    .venv/bin/python bench/finetune.py --arms lora qtha-weight --steps 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
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


def _gemm_gflops() -> float:
    """The float32 GEMM rate of this machine now, measured the way bench/quantum_sim.py measures it."""
    cmd = [sys.executable, str(Path(__file__).with_name("quantum_sim.py")), "--worker", "gemm", "gemm", "4096", "0", "5"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["gflops"]


def roofline(rows: list[Row], batch: int, seq_len: int, gemm_gflops: float) -> dict[str, float] | None:
    """Activation mode's circuit FLOPs per step, the rate achieved on them, and the step time the GEMM rate allows."""
    from bench.quantum_sim import kernel_flops
    from model.adapters import QthaAdapterConfig

    by_arm = {r.arm: r for r in rows}
    act, weight = by_arm.get("qtha-activation"), by_arm.get("qtha-weight")
    if act is None:
        return None
    config = QthaAdapterConfig(qnn_mode="activation")
    modules = 2 * 30  # q_proj and v_proj of SmolLM2-135M's 30 layers
    flops, gate_flops = kernel_flops(batch * seq_len, config.n_layers, True, config.n_qubits)
    step_flops = modules * flops
    out = {"circuit_gflop_per_step": step_flops / 1e9, "gate_gflop_per_step": modules * gate_flops / 1e9,
           "achieved_gflops": step_flops / act.step_s / 1e9, "gemm_gflops": gemm_gflops}
    if weight is not None:
        out["circuit_share_gflops"] = step_flops / max(act.step_s - weight.step_s, 1e-9) / 1e9
        out["roofline_step_s"] = weight.step_s + step_flops / (gemm_gflops * 1e9)
        out["vs_weight"] = act.step_s / weight.step_s
        out["roofline_vs_weight"] = out["roofline_step_s"] / weight.step_s
    return out


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
    load = os.getloadavg()[0]
    rows = [_in_subprocess(arm, args) for arm in args.arms]
    ratios = _ratios(rows)
    roof = roofline(rows, args.batch, args.seq_len, _gemm_gflops()) if "qtha-activation" in args.arms else None
    load_line = f"load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)"
    if args.json:
        print(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rows], "vs_lora": ratios,
                          "activation_roofline": roof, "load": load_line}, indent=1))
        return 0
    print(load_line)
    print(f"SmolLM2-135M, q_proj+v_proj, batch {args.batch}×{args.seq_len}, float32, per-block remat")
    print(_table(rows))
    for arm, r in ratios.items():
        print(f"{arm}: step time ×{r['step_time_ratio']:.2f} of LoRA (target ≤ 1.5), "
              f"trainable parameters ×{r['param_ratio']:.3f} of LoRA (target ≤ 0.24)")
    if roof is not None:
        print(f"qtha-activation roofline: {roof['circuit_gflop_per_step']:.0f} GFLOP of circuit kernels per step "
              f"({roof['gate_gflop_per_step']:.0f} gate-by-gate), {roof['achieved_gflops']:.1f} GFLOP/s over the whole "
              f"step, float32 GEMM {roof['gemm_gflops']:.1f} GFLOP/s")
        if "roofline_step_s" in roof:
            print(f"qtha-activation step ×{roof['vs_weight']:.2f} of weight mode (target ≤ 3); circuits ran at "
                  f"{roof['circuit_share_gflops']:.1f} GFLOP/s beyond weight mode's step; at the GEMM rate the step "
                  f"would take {roof['roofline_step_s']:.2f} s (×{roof['roofline_vs_weight']:.2f} of weight mode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
