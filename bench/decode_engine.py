"""Decoding speed of ``model.DecodeEngine`` on the bundled SmolLM2 at several concurrencies (engine only, no HTTP).

    python -m bench.decode_engine [--batches 1 4 16] [--tokens 64] [--chunk 8] [--capacity 512]

Prints warm-up time, then per concurrency: aggregate generated tokens/s, per-request tokens/s and the mean
time to the first token. Each request is a different arithmetic question under the chat template, greedy, with
``max_tokens`` fixed and end-of-turn ignored so every request generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import time

from model import DecodeEngine, EngineConfig, SamplingParams, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=512)
    parser.add_argument("--source", default="bundled:smollm2")
    args = parser.parse_args()

    loaded = load_checkpoint(args.source)
    slots = max(args.batches)
    config = EngineConfig(max_slots=slots, capacity=args.capacity, chunk_tokens=args.chunk, max_queue=4 * slots,
                          prefill_buckets=(64, args.capacity), span_buckets=(128, args.capacity))
    engine = DecodeEngine(loaded.model, loaded.tokenizer, config)
    engine._stop_ids = frozenset()  # benchmark: every request generates exactly --tokens tokens
    t0 = time.perf_counter()
    engine.warmup()
    print(f"warm-up (compile every shape): {time.perf_counter() - t0:.1f} s")
    engine.start()
    print(f"{'concurrency':>11} {'tok/s total':>12} {'tok/s/request':>14} {'ttft mean s':>12} {'wall s':>8}")
    for batch in args.batches:
        prompts = [engine.chat_prompt([{"role": "user", "content": f"What is {12 + i} plus {7 * i}?"}])
                   for i in range(batch)]
        params = SamplingParams(max_tokens=args.tokens)
        first: dict[int, float] = {}
        start = time.perf_counter()
        handles = []
        for i, p in enumerate(prompts):
            def on_event(event, i=i, first=first):
                first.setdefault(i, time.perf_counter())
            handles.append(engine.submit(p, params, on_event=on_event))
        results = [h.result() for h in handles]
        wall = time.perf_counter() - start
        tokens = sum(r.usage.completion_tokens for r in results)
        ttft = sum(first[i] - start for i in range(batch)) / batch
        print(f"{batch:>11} {tokens / wall:>12.1f} {tokens / wall / batch:>14.1f} {ttft:>12.2f} {wall:>8.1f}")
    engine.stop()


if __name__ == "__main__":
    main()
