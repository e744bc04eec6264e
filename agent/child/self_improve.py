"""The training child's self-improvement data: the champion samples answers to prompts alone, and only verified
samples are trained on (a recipe with ``method = "self-improve"``).

Pool: this cycle's generator questions (train split, without their solutions; the generator's answer is the known
answer) and inbox rows whose answer is a bare integer (a final answer without working), minus every prompt that
overlaps the held-out set (:func:`model.disjoint_pool`). Sampling runs the champion (the parent adapter, merged when
it can be) through :class:`model.DecodeEngine`, the server's decoding code. The round's kept samples and statistics
are appended to ``<state>/self-improve/`` once the candidate is trained: the next cycles replay the samples and
compare their statistics with this round's (collapse detection).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import policies
from agent.child.entry import TaskContext
from agent.daemon.inbox import read_examples
from agent.files import fsync_path

__all__ = ["SelfImproveStoppedError", "commit_round", "self_improve_examples"]

_BARE_INT = re.compile(r"\s*(-?\d+)\s*\.?\s*")
TRAINING_SET = "self-improve.jsonl"
ROUND_FILE = "self-improve-round.json"


class SelfImproveStoppedError(RuntimeError):
    """The round was stopped before training (collapse detected, or nothing verified); the message says why."""


def _pool(payload: dict[str, Any], recipe: policies.Recipe, cycle: str, heldout: list[str]) -> list[Any]:
    from model import PoolPrompt, disjoint_pool, generate_math_problems, prompt_hash

    seed = int(payload["data_seed"]) * 100_003 + (int(cycle) if cycle.isdigit() else 0)
    pool = []
    if payload["task"] == "maths":
        pool = [PoolPrompt(p.key, p.question, p.answer)
                for p in generate_math_problems(recipe.pool_prompts, split="train", seed=seed)]
    for row in read_examples(Path(payload["dataset_dir"])):
        found = _BARE_INT.fullmatch(row.answer)
        if found:  # an inbox row with only its final answer: a prompt the champion must work out itself
            pool.append(PoolPrompt(f"inbox/{prompt_hash(row.prompt)[:12]}", row.prompt, int(found.group(1))))
    return disjoint_pool(pool, heldout)


def _history(state: Path) -> tuple[list[Any], list[Any]]:
    """Earlier rounds' kept samples (for replay) and statistics (for collapse detection), oldest first."""
    from model import KeptSample, RoundStats

    kept, rounds = [], []
    samples, stats = state / "verified.jsonl", state / "rounds.jsonl"
    if samples.exists():
        kept = [KeptSample(**json.loads(line)) for line in samples.read_text().splitlines() if line.strip()]
    if stats.exists():
        fields = {f.name for f in dataclasses.fields(RoundStats)}
        rounds = [RoundStats(**{k: v for k, v in json.loads(line).items() if k in fields})
                  for line in stats.read_text().splitlines() if line.strip()]
    return kept, rounds


def _sampler(loaded: Any, parent: Path | None) -> Any:
    """The champion as the engine serves it: base + parent adapter, folded in when the adapter allows it."""
    from flax import nnx

    from model import DecodeEngine, EngineConfig, is_mergeable, load_adapter, merge_adapters
    from model.artifacts import MANIFEST_FILE

    model = loaded.model
    if parent is not None and (parent / MANIFEST_FILE).exists():
        model = nnx.clone(loaded.model)
        load_adapter(model, parent, base_fingerprint=loaded.fingerprint)
        model = merge_adapters(model) if is_mergeable(model) else model
    return DecodeEngine(model, loaded.tokenizer, EngineConfig(max_slots=16, capacity=256, max_queue=64),
                        name="self-improve")


def self_improve_examples(
    payload: dict[str, Any], recipe: policies.Recipe, loaded: Any, parent: Path | None, heldout: list[str],
    workdir: Path, ctx: TaskContext,
) -> tuple[list[Any], dict[str, float]]:
    """This cycle's training examples and the round's metrics (``si_*``); a resumed cycle reads back the set it
    sampled before (same examples, no second sampling).

    Raises:
        SelfImproveStoppedError: collapse detected or no verified sample (the reason is the message).
    """
    from model import ChatExample, KeptSample, build_training_set, collapse_reason, sample_pool, verify_round

    saved, round_file = workdir / TRAINING_SET, workdir / ROUND_FILE
    if saved.exists() and round_file.exists():
        rows = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
        return [ChatExample(r["prompt"], r["response"]) for r in rows], json.loads(round_file.read_text())["metrics"]
    state = Path(payload["self_improve_dir"])
    replay, rounds = _history(state)
    pool = _pool(payload, recipe, workdir.name, heldout)
    if not pool:
        raise SelfImproveStoppedError("self-improve: the prompt pool is empty after removing held-out overlaps")
    cpu0, wall0 = time.process_time(), time.monotonic()
    engine = _sampler(loaded, parent)
    engine.start()
    try:
        samples = sample_pool(
            engine, pool, k=recipe.samples_k, temperature=recipe.temperature, top_p=recipe.top_p,
            max_tokens=int(payload.get("eval_max_new_tokens", 96)), seed=recipe.seed * 7919 + len(rounds),
            progress=lambda done, total: ctx.emit({"event": "log", "message": f"self-improve sampled {done}/{total}"}),
        )
    finally:
        engine.stop()
    result = verify_round(samples, threshold=recipe.agreement, max_paths=recipe.max_paths)
    stats = result.stats
    metrics = {f"si_{k}": float(v) for k, v in stats.to_dict().items()} | {
        "si_sampling_cpu_s": time.process_time() - cpu0,
        "si_sampling_wall_s": time.monotonic() - wall0,
        "si_completion_tokens": float(sum(s.completion_tokens for s in samples)),
        "si_from_base": 1.0 if recipe.from_base else 0.0,
    }
    reason = collapse_reason(stats, rounds[0] if rounds else None, rounds[-1] if rounds else None)
    stopped = None if reason is None else (
        f"self-improve stopped: {reason} (drawn {stats.drawn}, verified {stats.verified}, used {stats.used})")
    ctx.emit({"event": "self_improve", **metrics, "reasons": result.reasons, "stopped": stopped})
    if stopped is not None:
        raise SelfImproveStoppedError(stopped)
    mixed: list[KeptSample] = build_training_set(result.kept, replay, replay_share=recipe.replay_share,
                                                 seed=recipe.seed)
    metrics["si_replayed"] = float(len(mixed) - len(result.kept))
    _write_lines(saved, [json.dumps(k.to_dict()) for k in mixed])
    round_file.write_text(json.dumps({"metrics": metrics, "stats": stats.to_dict(),
                                      "kept": [k.to_dict() for k in result.kept]}))
    return [k.as_example() for k in mixed], metrics


def commit_round(payload: dict[str, Any], workdir: Path) -> None:
    """Appends this cycle's kept samples and statistics to the shared history (after the candidate is trained, so
    a failed cycle leaves no round behind). Idempotent per cycle: a marker in the workdir records it."""
    round_file, marker = workdir / ROUND_FILE, workdir / "self-improve-committed"
    if not round_file.exists() or marker.exists():
        return
    data = json.loads(round_file.read_text())
    state = Path(payload["self_improve_dir"])
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _append(state / "verified.jsonl", [json.dumps(k) for k in data["kept"]])
    _append(state / "rounds.jsonl", [json.dumps(data["stats"] | {"cycle": workdir.name})])
    marker.touch()


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)
    fsync_path(path.parent)


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))
