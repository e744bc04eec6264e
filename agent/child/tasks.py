"""The tasks the training child runs (``agent.child.tasks:train`` / ``:evaluate``), wrapping ``model/``.

They run in the child process started by :class:`agent.child.trainer.ChildTrainer`; their ``payload`` is JSON built by
:func:`agent.child.trainer.task_config` plus the task's own fields, their ``ctx`` the child's event sink and stop flag.

train: load the base → inject the adapter the recipe names (warm-started from the champion's adapter when it has
the same configuration) → train with step checkpoints (mirrored into the cycle's ``checkpoints/step-N``) → save the
adapter. evaluate: load the base (+ the version's adapter) → score the fixed held-out set per example.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import policies
from agent.child.entry import Interrupted, TaskContext
from agent.cycle.trainer import save_checkpoint
from agent.daemon.inbox import read_examples

__all__ = ["adapter_config_for", "evaluate", "hardware_options", "train"]

_STATE = "train_state"  # model.train's own checkpoint directory inside the cycle's workdir
_META = "train_state.json"


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
    """The ``model.adapters`` config a recipe names (the model's config refuses what it cannot build)."""
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
    inbox = [ChatExample(e.prompt, e.answer) for e in read_examples(Path(payload["dataset_dir"]))]
    return inbox + examples


def _heldout(payload: dict[str, Any]) -> list[tuple[str, Any, int | None]]:
    """(id, chat example, exact answer or None) — the same for every version (fixed seed and split)."""
    from model import ChatExample, generate_math_problems

    n = int(payload["eval_examples"])
    if payload["task"] == "maths":
        problems = generate_math_problems(n, split="test", seed=int(payload["data_seed"]))
        return [(f"steps{p.steps}/{p.key}", p.as_example(), p.answer) for p in problems]
    pairs = _dialogues(payload, "test")[:n]
    return [(f"dialogue/{i:04d}", ChatExample(p.prompt, p.response), None) for i, p in enumerate(pairs)]


def _mirror(workdir: Path, state_dir: Path, last: int, ctx: TaskContext) -> int:
    """Copies model.train's newest checkpoint into ``checkpoints/step-N`` (atomic) and reports it."""
    meta = state_dir / _META
    if not meta.exists():
        return last
    step = int(json.loads(meta.read_text(encoding="utf-8"))["step"])
    if step <= last:
        return last
    path = save_checkpoint(
        workdir,
        step,
        lambda tmp: [
            shutil.copy2(f, tmp / f.name)
            for f in state_dir.iterdir()
            if f.is_file() and not f.name.endswith(".tmp")
        ],
    )
    ctx.emit({"event": "checkpoint", "step": step, "path": str(path)})
    return step


def train(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from model import load_checkpoint, tokenize_examples
    from model.adapters import adapter_config, count_adapter_params, inject_adapters
    from model.artifacts import load_adapter, read_adapter_manifest, save_adapter
    from model.train import Batch, TrainConfig
    from model.train import train as train_model
    from quantum import make_qnn

    recipe = policies.Recipe.from_dict(payload["recipe"])  # refuses a malformed recipe, naming the field
    _setup_jax(payload)
    workdir = Path(payload["workdir"])
    cycle = workdir.name
    steps, batch_size, seq_len, seed = recipe.steps, recipe.batch_size, recipe.seq_len, recipe.seed
    started = time.monotonic()
    cpu_started = time.process_time()  # this child's CPU time, XLA's threads included: what the budget charges

    loaded = load_checkpoint(payload["model_source"])
    model = loaded.model
    wanted = adapter_config_for(recipe)
    backend_name = recipe.backend
    qnn_backend, gradient = (
        _qnn_backend(backend_name, payload, seed=seed) if wanted.kind == "qtha" else (None, None)
    )
    qnn_factory = (
        None if qnn_backend is None else functools.partial(make_qnn, backend=qnn_backend, gradient=gradient)
    )
    parent = payload.get("parent_dir")
    warm = False
    if parent and (Path(parent) / "adapter.json").exists():
        manifest = read_adapter_manifest(parent)
        # Continue from the champion's adapter only when the recipe asks for the same one on the same base.
        if manifest.get("base_fingerprint") == loaded.fingerprint and _same_adapter(manifest, wanted):
            load_adapter(model, parent, base_fingerprint=loaded.fingerprint, qnn_factory=qnn_factory)
            warm = True
    if not warm:
        inject_adapters(model, wanted, rngs=nnx.Rngs(params=seed, dropout=seed + 1), qnn_factory=qnn_factory)
    used = adapter_config(model)
    ctx.emit({"event": "log", "message": f"adapter {used.kind} {used}, warm start from champion: {warm}"})

    examples = _training_examples(payload, cycle, max(steps * batch_size, 64))
    data = tokenize_examples(loaded.tokenizer, examples, seq_len=seq_len)
    if len(data) < batch_size:
        raise ValueError(f"only {len(data)} training examples fit seq_len={seq_len}; lower the batch size")

    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(data)) for _ in range(math.ceil(steps * batch_size / len(data)) + 1)]
    )
    batches = []
    for i in range(steps):
        rows = data.select(order[i * batch_size : (i + 1) * batch_size])
        batches.append(
            Batch(
                jnp.asarray(rows["inputs"]),
                jnp.asarray(rows["targets"]),
                jnp.asarray(rows["loss_mask"]),
                jnp.asarray(rows["attention_mask"]),
            )
        )

    state_dir = workdir / _STATE
    resume_from = payload.get("resume_from")
    if resume_from:
        shutil.rmtree(state_dir, ignore_errors=True)
        shutil.copytree(resume_from, state_dir)
    elif state_dir.exists():
        shutil.rmtree(state_dir)  # a stale state from an attempt whose checkpoint was never mirrored
    last = int(Path(resume_from).name.split("-")[1]) if resume_from else 0
    first_step = last
    every = max(1, steps // 6)
    config = TrainConfig(
        steps=steps,
        learning_rate=recipe.learning_rate,
        warmup_steps=min(5, steps // 4),
        seed=seed,
        checkpoint_every=every,
    )

    def progress(report: Any) -> None:
        nonlocal last
        last = _mirror(workdir, state_dir, last, ctx)  # the checkpoint written after the previous step
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
        result = train_model(
            model,
            batches,
            config,
            checkpoint_dir=state_dir,
            resume=bool(resume_from),
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
    last = _mirror(workdir, state_dir, last, ctx)
    # Circuit evaluations (forward passes; the adjoint backward pass is not counted): one per adapted module per
    # step in weight mode, one per token in activation mode.
    per_step = 1 if getattr(used, "qnn_mode", None) == "weight" else batch_size * seq_len
    modules = len(count_adapter_params(model).per_module)
    circuits = modules * per_step * max(0, result.steps_done - first_step) if used.kind == "qtha" else 0
    if used.kind == "qtha":
        ctx.emit(_quantum_event(qnn_backend, backend_name, circuits))
    device_metrics: dict[str, float] = {}
    if getattr(qnn_backend, "executor", None) is not None:
        outcome = getattr(qnn_backend, "outcome", None)
        device_metrics["device_fell_back"] = 1.0 if outcome is not None and outcome.action == "fell_back" else 0.0
    if result.stopped_early == "stop requested":
        raise Interrupted(f"stopped at step {result.steps_done} of {steps}; checkpoint at step {last}")
    if result.stopped_early:
        raise RuntimeError(f"training stopped early: {result.stopped_early} after {result.steps_done} steps")
    out = workdir / "candidate"
    shutil.rmtree(out, ignore_errors=True)
    save_adapter(model, out, base_fingerprint=loaded.fingerprint)
    finite = [x for x in result.losses if math.isfinite(x)]
    tail = finite[-max(1, len(finite) // 5) :] if finite else [math.nan]
    return {
        "artifact_dir": str(out),
        "steps": result.steps_done,
        "metrics": {
            "train_loss_final": float(sum(tail) / len(tail)),
            "train_loss_first": float(finite[0]) if finite else math.nan,
            "nonfinite_steps": float(result.skipped_nonfinite),
            "trainable_params": float(count_adapter_params(model).total),
            "train_wall_s": time.monotonic() - started,
            "train_cpu_s": time.process_time() - cpu_started,
            "warm_start": 1.0 if warm else 0.0,
            **device_metrics,
        },
        "base_fingerprint": loaded.fingerprint,
        "adapter_kind": used.kind,
        "adapter_config": json.loads(json.dumps(dataclasses.asdict(used), default=str)),
    }


def _same_adapter(manifest: dict[str, Any], wanted: Any) -> bool:
    saved = manifest.get("config", {})
    if manifest.get("kind") != wanted.kind:
        return False
    keys = ("rank", "n_qubits", "n_layers", "qnn_mode")
    same = all(saved.get(k) == getattr(wanted, k, None) for k in keys if hasattr(wanted, k))
    same = same and tuple(saved.get("targets", ())) == tuple(wanted.targets)
    if getattr(wanted, "bond_dim", None) is not None:  # None: resolved automatically, as the saved one was
        same = same and saved.get("bond_dim") == wanted.bond_dim
    return same


def evaluate(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from model import check_answer, generate, load_checkpoint, token_nll, tokenize_examples
    from model.adapters import count_adapter_params
    from model.artifacts import load_adapter

    _setup_jax(payload)
    loaded = load_checkpoint(payload["model_source"])
    model = loaded.model
    artifact = Path(payload["artifact_dir"])
    params = 0
    if (artifact / "adapter.json").exists():
        load_adapter(model, artifact, base_fingerprint=loaded.fingerprint)
        params = count_adapter_params(model).total
    items = _heldout(payload)
    seq_len, batch = int(payload["seq_len"]), int(payload["eval_batch_size"])
    data = tokenize_examples(loaded.tokenizer, [e for _, e, _ in items], seq_len=seq_len)
    kept = [i for i in range(len(items)) if i not in set(data.dropped)]
    graphdef, weights = nnx.split(model)

    @jax.jit
    def example_nll(weights: Any, inputs: Any, attention: Any, targets: Any, mask: Any) -> Any:
        # The weights are an argument, not a closure: constants of a real model's size would blow up XLA.
        logits = nnx.merge(graphdef, weights)(inputs, attention_mask=attention)
        return jnp.sum(token_nll(logits, targets) * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)

    nll: dict[str, float] = {}
    for start in range(0, len(data), batch):
        if ctx.stop_requested:
            raise Interrupted(f"evaluation stopped after {start} of {len(data)} examples")
        # Every chunk has one shape (the last is padded by repeating rows): one compiled forward pass.
        rows = data.select(np.arange(start, start + batch) % len(data))
        arrays = [jnp.asarray(rows[k]) for k in ("inputs", "attention_mask", "targets", "loss_mask")]
        values = np.asarray(example_nll(weights, *arrays))
        for r in range(min(batch, len(data) - start)):
            nll[items[kept[start + r]][0]] = float(values[r])
        ctx.emit({"event": "progress", "done": min(start + batch, len(data)), "of": len(items)})
    if ctx.stop_requested:
        raise Interrupted("evaluation stopped before generation")
    # Greedy answers in one batch (one compiled decoding loop); they double as the servability smoke test.
    max_new = int(payload["eval_max_new_tokens"])
    prompts = [e.prompt for _, e, _ in items]
    texts = generate(model, loaded.tokenizer, prompts, max_new_tokens=max_new)
    correct = {
        key: 1.0 if check_answer(text, answer) else 0.0
        for (key, _, answer), text in zip(items, texts, strict=True)
        if answer is not None
    }
    smoke = len(texts) == len(prompts) and all(isinstance(t, str) for t in texts)
    score_kind = payload.get("eval_score", "nll")
    scores = {k: (correct.get(k, 0.0) if score_kind == "exact_match" else -v) for k, v in nll.items()}
    metrics = {
        "loss": float(np.mean(list(nll.values()))) if nll else math.nan,
        "accuracy": float(np.mean(list(correct.values()))) if correct else math.nan,
        "examples": float(len(scores)),
        "smoke_ok": 1.0 if smoke else 0.0,
        "trainable_params": float(params),
    }
    return {"scores": scores, "metrics": metrics}
