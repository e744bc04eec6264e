"""Decoding speed of ``model.DecodeEngine`` on the bundled SmolLM2 at several concurrencies (engine only, no HTTP).

    python -m bench.decode_engine [--batches 1 4 16] [--tokens 64] [--chunk 8] [--capacity 512] [--repeats 2]
                                  [--llama-threads 2]

Prints warm-up time, then per concurrency (best of ``--repeats`` rounds, the machine being shared): aggregate
generated tokens/s, per-request tokens/s and the mean time to the first token. Each request is a different
arithmetic question under the chat template, greedy, with ``max_tokens`` fixed and end-of-turn ignored so every
request generates the same number of tokens. With llama-cpp-python installed, the same single-stream run through
llama.cpp on the same GGUF file follows, for a ratio at concurrency 1 (its Python API decodes one sequence).
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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--llama-threads", type=int, default=2)
    args = parser.parse_args()

    loaded = load_checkpoint(args.source)
    slots = max(args.batches)
    config = EngineConfig(max_slots=slots, capacity=args.capacity, chunk_tokens=args.chunk, max_queue=4 * slots,
                          prefill_buckets=(64, args.capacity), span_buckets=(128, args.capacity))
    engine = DecodeEngine(loaded.model, loaded.tokenizer, config)
    t0 = time.perf_counter()
    engine.warmup()
    print(f"warm-up (compile every shape): {time.perf_counter() - t0:.1f} s")
    engine.start()
    print(f"{'concurrency':>11} {'tok/s total':>12} {'tok/s/request':>14} {'ttft mean s':>12} {'wall s':>8}")
    for batch in args.batches:
        prompts = [engine.chat_prompt([{"role": "user", "content": f"What is {12 + i} plus {7 * i}?"}])
                   for i in range(batch)]
        rounds = [_round(engine, prompts, SamplingParams(max_tokens=args.tokens, ignore_eos=True)) for _ in range(args.repeats)]
        tokens, wall, ttft = min(rounds, key=lambda r: r[1])
        print(f"{batch:>11} {tokens / wall:>12.1f} {tokens / wall / batch:>14.1f} {ttft:>12.2f} {wall:>8.1f}")
    engine.stop()
    if args.source.startswith("bundled:") or args.source.endswith(".gguf"):
        _llama_single_stream(args)


def _round(engine: DecodeEngine, prompts: list[list[int]], params: SamplingParams) -> tuple[int, float, float]:
    """(tokens generated, wall seconds, mean time to first token) of one round of concurrent requests."""
    first: dict[int, float] = {}
    start = time.perf_counter()
    handles = []
    for i, p in enumerate(prompts):
        def on_event(event, i=i, first=first):
            first.setdefault(i, time.perf_counter())
        handles.append(engine.submit(p, params, on_event=on_event))
    results = [h.result() for h in handles]
    wall = time.perf_counter() - start
    ttft = sum(first[i] - start for i in range(len(prompts))) / len(prompts)
    return sum(r.usage.completion_tokens for r in results), wall, ttft


def _llama_single_stream(args: argparse.Namespace) -> None:
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed (pip install -e '.[llama]'); no comparison")
        return
    from model import bundled_path

    path = bundled_path(args.source) if args.source.startswith("bundled:") else args.source
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=args.capacity, n_threads=args.llama_threads, verbose=False)
    try:
        ids = llm.tokenize(b"<|im_start|>user\nWhat is 12 plus 7?<|im_end|>\n<|im_start|>assistant\n",
                           add_bos=False, special=True)
        best = None
        for _ in range(args.repeats):
            start, count, first = time.perf_counter(), 0, 0.0
            for _token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                count += 1
                first = first or time.perf_counter() - start
                if count == args.tokens:
                    break
            wall = time.perf_counter() - start
            best = min(best or (wall, first), (wall, first))
        wall, first = best
        print(f"{'llama.cpp 1':>11} {args.tokens / wall:>12.1f} {args.tokens / wall:>14.1f} {first:>12.2f} "
              f"{wall:>8.1f}   ({args.llama_threads} threads, same GGUF, Q4_1 weights)")
    finally:
        llm.close()


if __name__ == "__main__":
    main()
