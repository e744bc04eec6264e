"""How many verified samples one self-improvement round draws from the base model, with 0..3 worked examples shown.

Self-improvement from the base (issue 17, arm (b)) can only learn from samples the verifier keeps. This samples the
same pool as ``bench/self_improve.py``'s first (b) round (generator questions, solutions removed, held-out prompts
filtered out; ``--seed`` as there) with each number of hand-written worked examples (``model.WORKED_EXAMPLES``,
STaR's few-shot prompt) and prints, per setting: samples drawn and verified, pass@k, the verifier's reasons,
tokens generated and sampling CPU-s. Results are written to ``--out`` as JSON, one file per setting, and a rerun
skips the finished settings.

    PYTHONPATH=. python bench/sampling_yield.py --out reports/self-improvement/yield --prompts 32 --worked 0 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.self_improve import _pool, _sets  # noqa: E402
from model import (  # noqa: E402
    MARKED_ANSWER_INSTRUCTION,
    WORKED_EXAMPLES,
    DecodeEngine,
    EngineConfig,
    load_checkpoint,
    sample_pool,
    sampling_capacity,
    verify_round,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/self-improvement/yield")
    ap.add_argument("--checkpoint", default="bundled:smollm2")
    ap.add_argument("--prompts", type=int, default=32, help="the first N prompts of the pool")
    ap.add_argument("--worked", type=int, nargs="+", default=[0, 3], choices=range(len(WORKED_EXAMPLES) + 1))
    ap.add_argument("--seed", type=int, default=101, help="the pool's data seed (101: seed 0's first (b) round)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--n-heldout", type=int, default=500)
    ap.add_argument("--n-independent", type=int, default=200)
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_checkpoint(args.checkpoint)
    held = [e.prompt for s in _sets(args).values() for e in s]
    pool = _pool("generator", 128, args.seed, held)[: args.prompts]
    print(f"pool: {len(pool)} prompts (seed {args.seed}), k={args.k}, {args.tokens} tokens", flush=True)
    for n in args.worked:
        # the first files were written at the default temperature, without it in the name
        temp = "" if args.temperature == 0.8 else f"-t{args.temperature:g}"
        path = out / f"worked{n}{temp}-prompts{len(pool)}-seed{args.seed}.json"
        if not path.exists():
            capacity = sampling_capacity(base.tokenizer, pool, max_tokens=args.tokens,
                                         instruction=MARKED_ANSWER_INSTRUCTION, worked_examples=WORKED_EXAMPLES[:n])
            engine = DecodeEngine(base.model, base.tokenizer,
                                  EngineConfig(max_slots=args.slots, capacity=capacity, max_queue=64))
            engine.start()
            cpu0, wall0 = time.process_time(), time.monotonic()
            try:
                samples = sample_pool(engine, pool, k=args.k, temperature=args.temperature, top_p=0.95,
                                      max_tokens=args.tokens, seed=args.seed, instruction=MARKED_ANSWER_INSTRUCTION,
                                      worked_examples=WORKED_EXAMPLES[:n])
            finally:
                engine.stop()
            result = verify_round(samples, threshold=0.5, max_paths=4)
            record = result.stats.to_dict() | {
                "worked_examples": n, "reasons": result.reasons, "cpu_s": time.process_time() - cpu0,
                "wall_s": time.monotonic() - wall0, "tokens": sum(s.completion_tokens for s in samples),
                "kept": [k.to_dict() for k in result.kept]}
            path.write_text(json.dumps(record, indent=1))
        r = json.loads(path.read_text())
        print(f"worked examples {n}, temperature {args.temperature:g}: verified {r['verified']}/{r['drawn']}, pass@{args.k} {r['pass_at_k']:.3f}, "
              f"kept paths {r['used']}, reasons {r['reasons']}, {r['tokens']} tokens, {r['cpu_s']:.0f} CPU-s "
              f"({r['wall_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
