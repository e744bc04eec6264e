"""The tasks the training child runs (``agent.child.tasks:train`` / ``:evaluate``): the daemon's recipe and
configuration turned into calls of ``model.finetune`` and ``model.evaluate``, the functions the quality study and
the tests call too.

They run in the child process started by :class:`agent.child.trainer.ChildTrainer`; their ``payload`` is JSON built by
:func:`agent.child.trainer.task_config` plus the task's own fields, their ``ctx`` the child's event sink and stop flag.

train: load the base → ``model.finetune``: the adapter the recipe names (continued from the champion's adapter when
it is the same one), step checkpoints written straight into the cycle's ``checkpoints/step-N`` (where the cycle
resumes from), the candidate adapter saved. evaluate: load the base (+ the version's adapter) → ``model.evaluate``
on the fixed held-out set, per example.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import policies
from agent.child.datasplit import split_inbox
from agent.child.entry import Interrupted, TaskContext
from agent.cycle.trainer import save_checkpoint
from agent.daemon.inbox import final_answer
from agent.daemon.usage_pool import USAGE_POOL
from agent.files import fsync_path

__all__ = [
    "SelfImproveStoppedError",
    "adapter_config_for",
    "check",
    "commit_reference",
    "commit_round",
    "evaluate",
    "hardware_options",
    "heldout_prompts",
    "self_improve_examples",
    "train",
]


def _setup_jax(payload: dict[str, Any]) -> None:
    """Persistent XLA compilation cache: compiling the training step dominates a short cycle on CPU, and every
    cycle of one recipe shape compiles the same program."""
    cache = payload.get("jax_cache_dir")
    if cache:
        import jax

        Path(cache).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


DEVICE_BACKENDS = ("emulator", "sampler", "origin")


def _read_api_key(section: dict[str, Any]) -> str:
    """The Origin API key from ``api_key_file`` or the ``api_key_env`` variable; no message ever shows it."""
    if section.get("api_key_file"):
        path = Path(section["api_key_file"])
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(
                f"cannot read the API key file {path} ({err.strerror}); fix quantum.api_key_file"
            ) from None
        where = f"file {path}"
    else:
        key = os.environ.get(section["api_key_env"], "").strip()
        where = f"environment variable {section['api_key_env']}"
    if not key:
        raise ValueError(
            f"backend = 'origin' needs an API key and the {where} is empty or unset; put the key in a file named "
            "by quantum.api_key_file (mode 0600) or in the variable named by quantum.api_key_env"
        )
    return key


def hardware_options(section: dict[str, Any], *, backend: str, seed: int) -> Any:
    """The ``quantum.HardwareOptions`` of the ``[quantum]`` section (as JSON): reads the key, calibration and
    latency files here, so ``quantum`` receives plain values.

    Raises:
        ValueError: a file is missing or malformed, the key is absent, or the calibration does not fit the grid.
    """
    import quantum
    from quantum.emulator import Calibration, DeviceSpec, EmulatorConfig, LatencyModel

    def text(key: str) -> str | None:
        path = section.get(key)
        if not path:
            return None
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"cannot read quantum.{key} = {path} ({err.strerror})") from None

    priced = section.get("price_per_job") is not None or section.get("price_per_shot") is not None
    pricing = (
        quantum.DevicePricing(per_job=section.get("price_per_job") or 0.0, per_shot=section.get("price_per_shot") or 0.0)
        if priced
        else None
    )
    emulator = calibration = origin = None
    if backend == "emulator":
        calibration_text, latency_text = text("emulator_calibration_file"), text("emulator_latency_file")
        try:
            calibration = Calibration.from_json(calibration_text) if calibration_text else None
            latency = LatencyModel.from_json(latency_text) if latency_text else LatencyModel()
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"quantum emulator file is malformed: {err}") from None
        grid = {"rows": int(section["emulator_rows"]), "cols": int(section["emulator_cols"])}
        device = DeviceSpec(name=calibration.device_name, **grid) if calibration else DeviceSpec(**grid)
        if calibration is not None and set(calibration.qubits) != set(device.qubits()):
            raise ValueError(
                f"the calibration file covers {len(calibration.qubits)} qubits but the grid "
                f"{grid['rows']}x{grid['cols']} has {device.n_qubits}; set quantum.emulator_rows/cols to its grid"
            )
        emulator = EmulatorConfig(device=device, latency=latency, **({"pricing": pricing} if pricing else {}))
    if backend == "origin":
        origin = quantum.OriginOptions(
            backend_name=str(section["origin_backend"]),
            api_key=_read_api_key(section),
            run=quantum.OriginRunOptions(
                amend=bool(section["origin_amend"]),
                mapping=bool(section["origin_mapping"]),
                optimization=bool(section["origin_optimization"]),
            ),
        )
    return quantum.HardwareOptions(
        kind=backend,  # type: ignore[arg-type]
        shots=int(section["shots"]),
        gradient=section["gradient"],
        spsa_epsilon=float(section["spsa_epsilon"]),
        spsa_samples=int(section["spsa_samples"]),
        seed=seed,
        sampler=section.get("sampler"),
        sampler_options=dict(section.get("sampler_options") or {}),
        sampler_service_options=dict(section.get("sampler_service_options") or {}),
        emulator=emulator,
        calibration=calibration,
        origin=origin,
        pricing=pricing,
        spend_limit=quantum.SpendLimit(
            max_shots=section.get("max_shots_per_cycle"), max_cost=section.get("max_cost_per_cycle")
        ),
        offline=section["offline"],
        offline_timeout_s=float(section["offline_timeout_s"]),
        offline_wait_s=float(section["offline_wait_s"]),
    )


def _qnn_backend(name: str, payload: dict[str, Any], *, seed: int = 0) -> tuple[Any, Any]:
    """The QNN backend and gradient rule the recipe names: ``(None, None)`` for the JAX simulator (the default),
    qsim exactly, or a device (emulator, sampler, Origin) through the executor, built from ``[quantum]``."""
    if name in ("", "jax"):
        return None, None
    import quantum

    if name == "qsim":
        return quantum.QsimBackend(), None
    if name in DEVICE_BACKENDS:
        options = hardware_options(payload["quantum"], backend=name, seed=seed)
        setup = quantum.device_backend(options)
        return setup.backend, setup.gradient
    raise ValueError(f"unknown quantum backend {name!r}; use jax, qsim, {', '.join(DEVICE_BACKENDS)}")


def _quantum_event(backend: Any, name: str, circuits: int) -> dict[str, Any]:
    """What the circuits cost: executor counters when there is an executor, else the simulator's circuit count;
    on a device, what the offline policy did (``offline``), if anything."""
    executor = getattr(backend, "executor", None)
    if executor is None:
        return {"event": "quantum", "backend": name, "circuits": circuits, "shots": 0}
    stats = executor.stats()
    event = {
        "event": "quantum",
        "backend": name,
        "circuits": stats.programs,
        "shots": stats.shots,
        "errors": dict(stats.errors),
        "cost": stats.cost,
    }
    outcome = getattr(backend, "outcome", None)
    if outcome is not None:
        event["offline"] = outcome.as_dict()
    return event


def adapter_config_for(recipe: policies.Recipe) -> Any:
    """The ``model.adapters`` config a recipe names. Values pass through unchanged: the model's config refuses what
    it cannot build with a message naming the field."""
    from model.adapters import LoraConfig, QthaAdapterConfig

    if recipe.adapter == "lora":
        return LoraConfig(rank=recipe.rank, alpha=2.0 * recipe.rank, targets=recipe.targets)
    return QthaAdapterConfig(
        n_qubits=recipe.qubits,
        n_layers=recipe.layers,
        qnn_mode=recipe.qnn_mode,
        bond_dim=recipe.bond_dim,
        targets=recipe.targets,
    )


def _dialogues(payload: dict[str, Any], split: str) -> list[Any]:
    """The bundled chatterbot pairs of one split (by conversation, seeded by data.seed)."""
    from model import load_chatterbot, split_chatterbot

    pairs, _report = load_chatterbot()
    return split_chatterbot(pairs, seed=int(payload["data_seed"]))[split]


def _training_examples(payload: dict[str, Any], cycle: str, count: int) -> list[Any]:
    from model import ChatExample, generate_math_problems

    seed = int(payload["data_seed"]) * 100_003 + (int(cycle) if cycle.isdigit() else 0)
    if payload["task"] == "maths":
        # Fresh problems each cycle (seeded by the cycle), always from the train split: no test leakage.
        examples = [p.as_example() for p in generate_math_problems(count, split="train", seed=seed)]
    else:
        examples = [ChatExample(p.prompt, p.response) for p in _dialogues(payload, "train")]
    # The inbox's held-out share (stable hash) is never trained on: it is part of the held-out pool. In the maths
    # task a final answer without working is no solution to copy: it is a self-improvement prompt (see _pool).
    split = split_inbox(Path(payload["dataset_dir"]), heldout_fraction=float(payload["heldout_fraction"]))
    maths = payload["task"] == "maths"
    inbox = [ChatExample(e.prompt, e.answer or "") for e in split.train if not (maths and e.kind == "final-answer")]
    return inbox + examples


def _heldout(payload: dict[str, Any]) -> list[Any]:
    """The held-out ``model.EvalExample``s: the bundled task's plus the inbox's held-out share. Their ids lead with
    the slice (``steps<N>/…``, ``dialogue/…``, ``<inbox slice>/inbox-…``): the gate reads it back from the scores.

    Without ``eval_window`` the fixed set (the first ``eval_examples`` of the pool, every inbox held-out example up
    to ``eval_inbox_max``): the same for every version. With a window, a fresh sample of the same size from the
    pool (``eval_pool_examples`` generated, every inbox held-out example), seeded by data seed and window.
    """
    import numpy as np

    from model import EvalExample, generate_math_problems

    n, window = int(payload["eval_examples"]), payload.get("eval_window")
    size = n if window is None else max(n, int(payload.get("eval_pool_examples", n)))
    if payload["task"] == "maths":
        problems = generate_math_problems(size, split="test", seed=int(payload["data_seed"]))
        pool = [EvalExample.from_math(p) for p in problems]
    else:
        pool = [EvalExample.from_dialogue(p, i) for i, p in enumerate(_dialogues(payload, "test")[:size])]
    split = split_inbox(Path(payload["dataset_dir"]), heldout_fraction=float(payload["heldout_fraction"]))
    maths = payload["task"] == "maths"
    inbox = [
        EvalExample(key, e.prompt, e.answer or "", slice_, _integer(e.answer or "") if maths else None)
        for key, slice_, e in split.heldout
    ]
    cap = int(payload.get("eval_inbox_max", len(inbox)))
    if window is None:
        return pool[:n] + inbox[:cap]
    rng = np.random.default_rng([int(payload["data_seed"]), int(window)])
    take = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))
    mine = sorted(rng.choice(len(inbox), size=min(cap, len(inbox)), replace=False)) if inbox else []
    return [pool[i] for i in take] + [inbox[i] for i in mine]


def _integer(answer: str) -> int | None:
    """An inbox answer that is an integer can be checked exactly against a generated one."""
    try:
        return int(answer.strip().replace(",", ""))
    except ValueError:
        return None


def _train_config(recipe: policies.Recipe) -> Any:
    """The ``model.FinetuneConfig`` of a recipe: warm-up over a quarter of the steps (at most 5), a checkpoint every
    sixth of them."""
    from model import FinetuneConfig, TrainConfig

    return FinetuneConfig(
        adapter=adapter_config_for(recipe),
        train=TrainConfig(
            steps=recipe.steps,
            learning_rate=recipe.learning_rate,
            warmup_steps=min(5, recipe.steps // 4),
            seed=recipe.seed,
            checkpoint_every=max(1, recipe.steps // 6),
        ),
        batch_size=recipe.batch_size,
    )


def _checkpoint_writer(workdir: Path, ctx: TaskContext) -> Callable[[int, Callable[[Path], None]], Path]:
    """Writes each step checkpoint atomically where the cycle resumes from, and tells the parent at once."""

    def write(step: int, fill: Callable[[Path], None]) -> Path:
        path = save_checkpoint(workdir, step, fill)
        ctx.emit({"event": "checkpoint", "step": step, "path": str(path)})
        return path

    return write


def train(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    from model import finetune, load_checkpoint, tokenize_examples
    from quantum import make_qnn

    recipe = policies.Recipe.from_dict(payload["recipe"])  # refuses a malformed recipe, naming the field
    config = _train_config(recipe)  # so does the model's config, before the model loads
    _setup_jax(payload)
    started = time.monotonic()
    cpu_started = time.process_time()  # this child's CPU time, XLA's threads included: what the budget charges
    workdir = Path(payload["workdir"])
    seq_len = recipe.seq_len
    loaded = load_checkpoint(payload["model_source"])
    backend_name = recipe.backend
    qnn_backend, gradient = (
        _qnn_backend(backend_name, payload, seed=recipe.seed) if config.adapter.kind == "qtha" else (None, None)
    )
    qnn_factory = (
        None if qnn_backend is None else functools.partial(make_qnn, backend=qnn_backend, gradient=gradient)
    )
    parent, resume_from = payload.get("parent_dir"), payload.get("resume_from")
    si_metrics: dict[str, float] = {}
    if recipe.method == "self-improve":
        heldout = heldout_prompts(payload)
        examples, si_metrics = self_improve_examples(
            payload, recipe, loaded, Path(parent) if parent else None, heldout, workdir, ctx)
        if recipe.from_base:  # ReST-EM: every round trains a fresh adapter on the base, not the champion's
            parent = None
        if len(examples) < config.batch_size:  # too few verified samples for one batch: repeat them
            examples = examples * -(-config.batch_size // max(1, len(examples)))
    else:
        examples = _training_examples(payload, workdir.name, max(config.train.steps * config.batch_size, 64))
    data = tokenize_examples(loaded.tokenizer, examples, seq_len=seq_len)

    def progress(report: Any) -> None:
        ctx.emit(
            {
                "event": "progress",
                "step": report.step,
                "of": report.total_steps,
                "loss": report.loss,
                "lr": report.learning_rate,
                "nonfinite": report.skipped_nonfinite,
            }
        )

    try:
        run = finetune(
            loaded,
            data,
            config,
            qnn_factory=qnn_factory,
            warm_start=Path(parent) if parent else None,
            checkpoint=_checkpoint_writer(workdir, ctx),
            resume_from=Path(resume_from) if resume_from else None,
            out=workdir / "candidate",
            progress=progress,
            should_stop=lambda: ctx.stop_requested,
        )
    except Exception:
        device_error = getattr(qnn_backend, "error", None)
        if device_error is None:
            raise
        # The device's spending so far is real even when the cycle fails; JAX re-raised the device's error as
        # a generic one, so raise the original (spend limit, offline, retries) with its one-line advice.
        ctx.emit(_quantum_event(qnn_backend, backend_name, 0))
        raise device_error from None
    used, result = run.adapter, run.train
    ctx.emit({"event": "log", "message": f"adapter {used.kind} {used}, warm start from champion: {run.warm_start}"})
    if used.kind == "qtha":
        # Circuit evaluations (forward passes; the adjoint backward pass is not counted): one per adapted module per
        # step in weight mode, one per token in activation mode.
        per_step = 1 if used.qnn_mode == "weight" else config.batch_size * seq_len
        circuits = len(run.params.per_module) * per_step * (result.steps_done - result.first_step)
        ctx.emit(_quantum_event(qnn_backend, backend_name, circuits))
    device_metrics: dict[str, float] = {}
    if getattr(qnn_backend, "executor", None) is not None:
        outcome = getattr(qnn_backend, "outcome", None)
        device_metrics["device_fell_back"] = 1.0 if outcome is not None and outcome.action == "fell_back" else 0.0
    if result.stopped_early == "stop requested":
        raise Interrupted(f"stopped at step {result.steps_done} of {config.train.steps}; checkpoint at that step")
    if result.stopped_early:
        raise RuntimeError(f"training stopped early: {result.stopped_early} after {result.steps_done} steps")
    if si_metrics:
        commit_round(payload, workdir)
    else:
        commit_reference(payload, workdir, examples)
    finite = [x for x in result.losses if math.isfinite(x)]
    tail = finite[-max(1, len(finite) // 5) :] if finite else [math.nan]
    return {
        "artifact_dir": str(run.adapter_dir),
        "steps": result.steps_done,
        "metrics": {
            "train_loss_final": float(sum(tail) / len(tail)),
            "train_loss_first": float(finite[0]) if finite else math.nan,
            "nonfinite_steps": float(result.skipped_nonfinite),
            "trainable_params": float(run.params.total),
            "train_wall_s": time.monotonic() - started,
            "train_cpu_s": time.process_time() - cpu_started,
            "warm_start": 1.0 if run.warm_start else 0.0,
            **device_metrics,
            **si_metrics,
        },
        "base_fingerprint": loaded.fingerprint,
        "adapter_kind": used.kind,
        "adapter_config": json.loads(json.dumps(dataclasses.asdict(used), default=str)),
    }


def evaluate(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    from model import EvalConfig, EvaluationStopped, count_adapter_params, load_adapter, load_checkpoint
    from model import evaluate as evaluate_model

    _setup_jax(payload)
    loaded = load_checkpoint(payload["model_source"])
    artifact = Path(payload["artifact_dir"])
    params = 0
    if (artifact / "adapter.json").exists():
        load_adapter(loaded.model, artifact, base_fingerprint=loaded.fingerprint)
        params = count_adapter_params(loaded.model).total
    examples = _heldout(payload)
    # Every example is answered, in one batch (one compiled decoding loop): the answers double as the servability
    # smoke test.
    config = EvalConfig(
        seq_len=int(payload["seq_len"]),
        batch_size=int(payload["eval_batch_size"]),
        generate="all",
        generate_batch_size=len(examples),
        max_new_tokens=int(payload["eval_max_new_tokens"]),
    )

    def progress(report: Any) -> None:
        if report.stage == "loss":
            ctx.emit({"event": "progress", "done": report.done, "of": len(examples)})

    try:
        result = evaluate_model(loaded.model, loaded.tokenizer, examples, config, progress=progress,
                                should_stop=lambda: ctx.stop_requested)
    except EvaluationStopped as exc:
        raise Interrupted(str(exc)) from None
    scores = result.scores(payload.get("eval_score", "nll"))
    probes = smoke_probes(payload, loaded.model, loaded.tokenizer)
    metrics = {
        "loss": result.loss,
        "accuracy": math.nan if result.accuracy is None else result.accuracy,
        "examples": float(len(scores)),
        "smoke_ok": 1.0 if all(r.completion is not None for r in result.examples) else 0.0,
        "smoke_failed": float(sum(p["failure"] is not None for p in probes)),
        "trainable_params": float(params),
    }
    return {"scores": scores, "metrics": metrics, "probes": probes}


PROBE_SEED = 90_210  # the smoke test's probe set: fixed, whatever data.seed the held-out set uses


def probe_prompts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The fixed probe set: ``(name, prompt)``; maths problems (each expects an integer) or dialogue openers."""
    from model import generate_math_problems

    count = int(payload.get("smoke_probes", 0))
    if count == 0:
        return []
    if payload["task"] == "maths":
        problems = generate_math_problems(count, split="test", seed=PROBE_SEED)
        return [(f"probe-{i}", p.as_example().prompt) for i, p in enumerate(problems)]
    return [(f"probe-{i}", p.prompt) for i, p in enumerate(_dialogues({**payload, "data_seed": PROBE_SEED}, "test")[:count])]


def smoke_probes(payload: dict[str, Any], model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """The smoke test: greedy answers to the probe set with their failure (:func:`policies.probe_failure`).

    An answer terminates when generation stopped on an end token before ``smoke_max_new_tokens``.
    """
    from model import extract_answer, generate_ids

    probes = probe_prompts(payload)
    if not probes:
        return []
    budget = int(payload["smoke_max_new_tokens"])
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for _, p in probes]
    sequences = generate_ids(
        model,
        tokenizer.encode_batch(rendered),
        max_new_tokens=budget,
        stop_ids=sorted(tokenizer.stop_ids),
        pad_id=tokenizer.pad_id,
    )
    results = []
    for (name, _prompt), ids in zip(probes, sequences, strict=True):
        answer = tokenizer.decode(ids)
        parses = extract_answer(answer) is not None if payload["task"] == "maths" else None
        failure = policies.probe_failure(answer, finished=len(ids) < budget, parses=parses)
        results.append({"probe": name, "answer": answer, "failure": failure})
    return results


def check(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """``qtha doctor`` and start-up: the base model loads and the configured quantum backend can be built."""
    from model import load_checkpoint

    loaded = load_checkpoint(payload["model_source"])
    _qnn_backend(str(payload.get("backend") or "jax"), payload)
    return {
        "model": loaded.source,
        "layers": loaded.config.num_hidden_layers,
        "vocab": loaded.config.vocab_size,
        "backend": payload.get("backend") or "jax",
    }


# ---- self-improvement (a recipe with method = "self-improve") ------------------------------------------------
# The champion samples answers to prompts alone; only verified samples are trained on. Pool (at most the recipe's
# pool_prompts, real prompts first): prompts real traffic sent (the serving usage log, exported by the daemon into
# the cycle's USAGE_POOL file; feedback's correct_answer is the known answer), the inbox's prompt-only rows and
# final-answer rows (the answer is the known answer), then this cycle's generator questions (train split, without
# their solutions; the generator's answer is the known answer) — every source minus every prompt that overlaps the
# held-out pool (model.disjoint_pool). Sampling runs the champion (the parent adapter, merged when it can be)
# through model.DecodeEngine, the server's decoding code. The round's kept samples and statistics are appended to
# <state>/self-improve/ once the candidate is trained: later cycles replay the samples and compare their
# statistics with this round's (collapse detection). A maths supervised cycle appends its reference rows there too
# (REFERENCE_FILE, newest REFERENCE_CAP): a round that continues the champion replays them beside the verified
# samples, because the champion learned from them (reports/self-improvement: replaying them kept 8.4 points of
# held-out accuracy a round on verified samples alone lost); a from-base (ReST-EM) round replays verified samples only.

TRAINING_SET = "self-improve.jsonl"
ROUND_FILE = "self-improve-round.json"
REFERENCE_FILE = "reference.jsonl"
REFERENCE_CAP = 2048
REFERENCE_REASON = "reference-solution"


class SelfImproveStoppedError(RuntimeError):
    """The round was stopped before training (collapse detected, or nothing verified); the message says why."""


def heldout_prompts(payload: dict[str, Any]) -> list[str]:
    """Every prompt an evaluation may score: the whole held-out pool the scheduled windows draw from (not only the
    gate's fixed set), every inbox held-out example, and the smoke test's probes. None is ever sampled for
    training."""
    size = max(int(payload["eval_examples"]), int(payload.get("eval_pool_examples", 0)))
    everything = _heldout({**payload, "eval_window": None, "eval_examples": size, "eval_inbox_max": 2**31})
    return [e.prompt for e in everything] + [prompt for _, prompt in probe_prompts(payload)]


def _known(answer: str | None) -> int | None:
    """A known answer given as text (feedback's correct_answer): a bare integer or a marked final answer."""
    from model import marked_answer

    if not answer:
        return None
    found = final_answer(answer)
    return found if found is not None else marked_answer(answer.strip())


def _real_prompts(payload: dict[str, Any], workdir: Path) -> dict[str, list[Any]]:
    """Prompts from real sources, by source: the usage log (as the daemon exported it for this cycle) and the
    inbox (only its training share: the held-out share is part of the held-out pool and is never sampled)."""
    from model import PoolPrompt, prompt_hash

    usage = []
    exported = workdir / USAGE_POOL
    if exported.exists():
        for line in exported.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                usage.append(PoolPrompt(str(row["prompt_id"]), row["prompt"], _known(row.get("correct_answer"))))
    split = split_inbox(Path(payload["dataset_dir"]), heldout_fraction=float(payload["heldout_fraction"]))
    inbox = [
        PoolPrompt(f"inbox/{prompt_hash(row.prompt)[:12]}", row.prompt, final_answer(row.answer or ""))
        for row in (*split.train, *split.prompts)
        if row.kind != "solved"  # a worked solution is a supervised example, not a prompt to work out
    ]
    return {"usage": usage, "inbox": inbox}


def _pool(payload: dict[str, Any], recipe: policies.Recipe, workdir: Path, heldout: list[str]) -> tuple[
        list[Any], dict[str, float]]:
    """This cycle's pool and where its prompts came from (``si_pool_*``): real prompts first (a seeded subset when
    there are more than ``pool_prompts``, those with a known answer first), generated ones to fill."""
    import numpy as np

    from model import PoolPrompt, disjoint_pool, generate_math_problems, prompt_hash

    cycle = workdir.name
    seed = int(payload["data_seed"]) * 100_003 + (int(cycle) if cycle.isdigit() else 0)
    sources = _real_prompts(payload, workdir)
    real: dict[str, tuple[str, Any]] = {}  # prompt hash -> (source, prompt); a known answer wins a duplicate
    for source, prompts in sources.items():
        for p in prompts:
            key = prompt_hash(p.prompt)
            if key not in real or (real[key][1].answer is None and p.answer is not None):
                real[key] = (source, p)
    offered = len(real)
    kept = {prompt_hash(p.prompt) for p in disjoint_pool([p for _, p in real.values()], heldout)}
    candidates = [real[k] for k in sorted(real) if k in kept]
    order = np.random.default_rng([int(payload["data_seed"]), int(cycle) if cycle.isdigit() else 0]).permutation(
        len(candidates))
    chosen = sorted((candidates[i] for i in order), key=lambda sp: sp[1].answer is None)[: recipe.pool_prompts]
    need = recipe.pool_prompts - len(chosen) if payload["task"] == "maths" else 0
    # The generator is prefix-stable per seed: draw spares, so prompts dropped for held-out overlap are replaced.
    problems = [PoolPrompt(p.key, p.question, p.answer)
                for p in generate_math_problems(2 * need + 8, split="train", seed=seed)] if need > 0 else []
    allowed = {id(p) for p in disjoint_pool(problems, heldout)}
    generated: list[Any] = []
    skipped = 0
    for p in problems:
        if len(generated) == need:
            break
        if id(p) in allowed:
            generated.append(p)
        else:
            skipped += 1
    pool = [p for _, p in chosen] + generated
    counts = {
        "si_pool_usage": float(sum(source == "usage" for source, _ in chosen)),
        "si_pool_inbox": float(sum(source == "inbox" for source, _ in chosen)),
        "si_pool_generated": float(len(generated)),
        "si_pool_known_answers": float(sum(p.answer is not None for p in pool)),
        "si_pool_heldout_removed": float(offered - len(candidates) + skipped),
    }
    return pool, counts


def _history(state: Path, *, reference: bool) -> tuple[list[Any], list[Any]]:
    """Earlier rounds' kept samples (for replay; with ``reference``, earlier supervised cycles' reference rows
    too) and statistics (for collapse detection), oldest first."""
    from model import KeptSample, RoundStats

    kept, rounds = [], []
    samples, stats = state / "verified.jsonl", state / "rounds.jsonl"
    for path in (samples, state / REFERENCE_FILE) if reference else (samples,):
        if path.exists():
            kept += [KeptSample(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    if stats.exists():
        fields = {f.name for f in dataclasses.fields(RoundStats)}
        rounds = [RoundStats(**{k: v for k, v in json.loads(line).items() if k in fields})
                  for line in stats.read_text().splitlines() if line.strip()]
    return kept, rounds


def _sampler(loaded: Any, parent: Path | None, capacity: int) -> Any:
    """The champion as the engine serves it: base + parent adapter, folded in when the adapter allows it;
    ``capacity`` tokens per slot (the longest prompt as sent plus the sampling budget)."""
    from flax import nnx

    from model import DecodeEngine, EngineConfig, is_mergeable, load_adapter, merge_adapters
    from model.artifacts import MANIFEST_FILE

    model = loaded.model
    if parent is not None and (parent / MANIFEST_FILE).exists():
        model = nnx.clone(loaded.model)
        load_adapter(model, parent, base_fingerprint=loaded.fingerprint)
        model = merge_adapters(model) if is_mergeable(model) else model
    return DecodeEngine(model, loaded.tokenizer, EngineConfig(max_slots=16, capacity=capacity, max_queue=64),
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
    from model import (
        MARKED_ANSWER_INSTRUCTION,
        WORKED_EXAMPLES,
        ChatExample,
        KeptSample,
        RoundStats,
        build_training_set,
        collapse_reason,
        sample_pool,
        sampling_capacity,
        verify_round,
    )

    saved, round_file = workdir / TRAINING_SET, workdir / ROUND_FILE
    if saved.exists() and round_file.exists():
        rows = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
        return [ChatExample(r["prompt"], r["response"]) for r in rows], json.loads(round_file.read_text())["metrics"]
    state = Path(payload["self_improve_dir"])
    replay, rounds = _history(state, reference=not recipe.from_base)
    pool, sources = _pool(payload, recipe, workdir, heldout)
    if not pool:
        nothing = {f"si_{k}": 0.0 for k in RoundStats(0, 0, 0, 0, 0.0, 0.0, 0.0).to_dict()}
        metrics = nothing | sources | {"si_sampling_cpu_s": 0.0, "si_sampling_wall_s": 0.0}
        empty = "self-improve stopped: the prompt pool is empty after removing held-out overlaps"
        ctx.emit({"event": "self_improve", **metrics, "reasons": {}, "stopped": empty})
        raise SelfImproveStoppedError(empty)
    cpu0, wall0 = time.process_time(), time.monotonic()
    shown = WORKED_EXAMPLES[: recipe.worked_examples]
    max_tokens = int(payload.get("eval_max_new_tokens", 96))
    engine = _sampler(loaded, parent, capacity=sampling_capacity(
        loaded.tokenizer, pool, max_tokens=max_tokens, instruction=MARKED_ANSWER_INSTRUCTION, worked_examples=shown))
    engine.start()
    try:
        samples = sample_pool(
            engine, pool, k=recipe.samples_k, temperature=recipe.temperature, top_p=recipe.top_p,
            max_tokens=max_tokens, seed=recipe.seed * 7919 + len(rounds),
            instruction=MARKED_ANSWER_INSTRUCTION, worked_examples=shown,
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
    } | sources
    reason = collapse_reason(stats, rounds[0] if rounds else None, rounds[-1] if rounds else None)
    stopped = None if reason is None else (
        f"self-improve stopped: {reason} (drawn {stats.drawn}, verified {stats.verified}, used {stats.used})")
    ctx.emit({"event": "self_improve", **metrics, "reasons": result.reasons, "stopped": stopped})
    if stopped is not None:
        raise SelfImproveStoppedError(stopped)
    mixed: list[KeptSample] = build_training_set(result.kept, replay, replay_share=recipe.replay_share,
                                                 seed=recipe.seed)
    metrics["si_replayed"] = float(len(mixed) - len(result.kept))
    metrics["si_replayed_reference"] = float(sum(k.reason == REFERENCE_REASON for k in mixed))
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


def commit_reference(payload: dict[str, Any], workdir: Path, examples: list[Any]) -> None:
    """Appends a trained maths supervised cycle's rows to the reference replay (newest ``REFERENCE_CAP`` kept).
    Idempotent per cycle, like :func:`commit_round`."""
    from model import KeptSample, prompt_hash

    marker = workdir / "reference-committed"
    if payload["task"] != "maths" or marker.exists():
        return
    state = Path(payload["self_improve_dir"])
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state / REFERENCE_FILE
    old = path.read_text().splitlines() if path.exists() else []
    rows = [json.dumps(KeptSample(prompt_hash(e.prompt)[:16], e.prompt, e.response, REFERENCE_REASON).to_dict())
            for e in examples if e.response.strip()]
    _write_lines(path, (old + rows)[-REFERENCE_CAP:])
    marker.touch()


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)
    fsync_path(path.parent)


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(f"{line}\n" for line in lines))
