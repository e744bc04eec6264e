"""Serving benchmark: ``qtha serve`` against llama.cpp's server on the same GGUF, with the official openai client.

Both servers run as their own processes on loopback; the client streams every request (to see the first token)
at concurrency 1, 4 and 16 and reports aggregate generated tokens/s, p50/p99 request latency and p50/p99 time
to first token. llama.cpp runs only where ``llama_cpp`` (llama-cpp-python) imports; its column is empty
otherwise. Not a test: it prints figures (and writes them as JSON with ``--json``).

    python -m bench.serve                         # bundled SmolLM2, 1/4/16 clients, 64 tokens per answer
    python -m bench.serve --concurrency 1 4 --max-tokens 32 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import openai

PROMPTS = (
    "What is 12 plus 7?",
    "Tom has 5 apples and buys 3 more. How many apples does he have now?",
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is the capital of France?",
    "Explain what a cat is in one sentence.",
    "Count from one to five.",
    "Give me a short greeting.",
)


@dataclass(frozen=True)
class Level:
    """The figures of one server at one concurrency."""

    server: str
    concurrency: int
    requests: int
    failures: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    latency_p50_s: float
    latency_p99_s: float
    ttft_p50_s: float
    ttft_p99_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def _one(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(latency, time to first token, generated tokens) of one streamed greedy request."""
    started = time.perf_counter()
    first = None
    pieces = 0
    usage_tokens = None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                pieces += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    # Servers that send no usage in a stream: one content chunk per token is what both servers do by default.
    return end - started, (first or end) - started, usage_tokens if usage_tokens is not None else pieces


def run_level(server: str, base_url: str, model: str, concurrency: int, *, rounds: int, max_tokens: int) -> Level:
    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    per_worker = max(rounds, -(-8 // concurrency))
    results: list[tuple[float, float, int]] = []
    failures = 0
    lock = threading.Lock()

    def worker(w: int) -> None:
        nonlocal failures
        for i in range(per_worker):
            prompt = PROMPTS[(w * per_worker + i) % len(PROMPTS)]
            try:
                out = _one(client, model, prompt, max_tokens)
            except openai.APIError as exc:
                print(f"  {server}: request failed: {exc}", file=sys.stderr)
                with lock:
                    failures += 1
                continue
            with lock:
                results.append(out)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    latencies, ttfts = [r[0] for r in results], [r[1] for r in results]
    return Level(
        server=server,
        concurrency=concurrency,
        requests=len(results),
        failures=failures,
        tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        latency_p50_s=statistics.median(latencies) if latencies else float("nan"),
        latency_p99_s=_percentile(latencies, 0.99),
        ttft_p50_s=statistics.median(ttfts) if ttfts else float("nan"),
        ttft_p99_s=_percentile(ttfts, 0.99),
    )


def _bench_server(
    name: str, command: list[str], env: dict[str, str], ready_url: str, base_url: str, model: str, args: argparse.Namespace
) -> list[Level]:
    print(f"starting {name}: {' '.join(command)}", file=sys.stderr)
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(ready_url, process, args.start_timeout_s)
        run_level(name, base_url, model, 1, rounds=1, max_tokens=args.max_tokens)  # warm caches and compiles
        levels = []
        for c in args.concurrency:
            level = run_level(name, base_url, model, c, rounds=args.rounds, max_tokens=args.max_tokens)
            print(f"  {name} c={c}: {level.tokens_per_s:.1f} tok/s, p50 {level.latency_p50_s:.2f} s, "
                  f"ttft p50 {level.ttft_p50_s:.3f} s, failures {level.failures}", file=sys.stderr)
            levels.append(level)
        return levels
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        print(f"  ({name} log: {log.name})", file=sys.stderr)


def bench_qtha(args: argparse.Namespace, gguf: Path) -> list[Level]:
    port = _free_port()
    state = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {
        **os.environ,
        "QTHA_STATE_DIR": str(state),
        "QTHA_MODEL__SOURCE": str(gguf),
        "QTHA_SERVE__PORT": str(port),
        "QTHA_SERVE__MAX_BATCH": str(max(args.concurrency)),
        "QTHA_SERVE__MAX_PROMPT_TOKENS": "256",
        "QTHA_SERVE__MAX_TOKENS": str(args.max_tokens),
        "QTHA_SERVE__DEFAULT_MAX_TOKENS": str(args.max_tokens),
        "QTHA_SERVE__USAGE_LOG": "true",
    }
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "agent.cli", "serve"]
    return _bench_server("qtha", command, env, f"{url}/readyz", f"{url}/v1", "qtha", args)


def bench_llama_cpp(args: argparse.Namespace, gguf: Path) -> list[Level]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(256 + args.max_tokens), "--n_threads", str(args.llama_threads),
        # By default each new request cuts the running one short: concurrent clients would get truncated answers.
        "--interrupt_requests", "False",
    ]
    return _bench_server("llama.cpp", command, dict(os.environ), f"{url}/v1/models", f"{url}/v1", "bench", args)


def table(qtha: list[Level], llama: list[Level]) -> str:
    by_c = {lv.concurrency: lv for lv in llama}
    if not qtha:  # llama.cpp alone: show it in the qtha columns' place is wrong; list it plainly instead
        return "\n".join(f"llama.cpp c={lv.concurrency}: {lv.tokens_per_s:.1f} tok/s, p50 {lv.latency_p50_s:.2f} s, "
                         f"p99 {lv.latency_p99_s:.2f} s, ttft p50 {lv.ttft_p50_s:.3f} s" for lv in llama)
    lines = [
        "| clients | qtha tok/s | llama.cpp tok/s | ratio | qtha p50 / p99 latency (s) | llama.cpp p50 / p99 (s) "
        "| qtha TTFT p50 / p99 (s) | llama.cpp TTFT p50 / p99 (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for q in qtha:
        lc = by_c.get(q.concurrency)
        ratio = f"{q.tokens_per_s / lc.tokens_per_s:.2f}x" if lc and lc.tokens_per_s else "—"
        lines.append(
            f"| {q.concurrency} | {q.tokens_per_s:.1f} | {f'{lc.tokens_per_s:.1f}' if lc else '—'} | {ratio} "
            f"| {q.latency_p50_s:.2f} / {q.latency_p99_s:.2f} "
            f"| {f'{lc.latency_p50_s:.2f} / {lc.latency_p99_s:.2f}' if lc else '—'} "
            f"| {q.ttft_p50_s:.3f} / {q.ttft_p99_s:.3f} "
            f"| {f'{lc.ttft_p50_s:.3f} / {lc.ttft_p99_s:.3f}' if lc else '—'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file both servers load (default: bundled SmolLM2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=1, help="requests per client at each level (at least 8 total)")
    parser.add_argument(
        "--llama-threads", type=int, default=os.cpu_count() or 1,
        help="llama.cpp's threads (on a busy machine 1 beats oversubscribing the cores)",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--start-timeout-s", type=float, default=900.0)
    parser.add_argument("--servers", nargs="+", choices=["qtha", "llama.cpp"], default=["qtha", "llama.cpp"])
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.gguf is None:
        from model import bundled_path

        args.gguf = bundled_path("bundled:smollm2")
    qtha = bench_qtha(args, args.gguf) if "qtha" in args.servers else []
    llama: list[Level] = []
    if "llama.cpp" not in args.servers:
        pass
    elif importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None:
        print("llama.cpp's server is not installed (pip install 'llama-cpp-python[server]'): no llama.cpp column",
              file=sys.stderr)
    else:
        llama = bench_llama_cpp(args, args.gguf)
    print(f"model: {args.gguf.name}, {args.max_tokens} tokens per answer, greedy, streamed; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end; llama.cpp threads {args.llama_threads}")
    print(table(qtha, llama))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(lv) for lv in qtha + llama], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
