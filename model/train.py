"""Training the adapters of a model: AdamW with warm-up and cosine decay, global-norm clipping, non-finite steps
skipped and counted, gradient accumulation, per-block remat, step checkpoints to resume from.

Only ``AdapterParam`` variables reach the optimizer; the frozen base weights are passed to the compiled step as an
argument (closing over them would bake 135M constants into the program) and are never written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .adapters import AdapterParam, adapter_config, has_token_circuits, refresh_qnn_cores
from .data import TokenizedData
from .lm import causal_lm_loss
from .train_state import CheckpointState, load_train_checkpoint, save_train_checkpoint

__all__ = [
    "Batch",
    "CheckpointWriter",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "batch_schedule",
    "make_optimizer",
    "train",
]

CheckpointWriter = Callable[[int, Callable[[Path], None]], object]
"""``writer(step, fill)``: gives ``fill`` a fresh directory to write the step's state into, and makes it durable
where a resumed run will look (the caller owns the layout: e.g. the daemon's ``checkpoints/step-N``, made
atomic). ``lambda step, fill: fill(directory)`` keeps only the newest checkpoint in one directory."""


class Batch(NamedTuple):
    """One (micro-)batch of next-token training data.

    Attributes:
        inputs: int32 ``[B, T]`` token ids fed to the model.
        targets: int32 ``[B, T]``, ``targets[:, t]`` is the token after ``inputs[:, t]``.
        loss_mask: float32 ``[B, T]``, 1 where the target counts (response tokens for chat data), 0 elsewhere.
        attention_mask: int32 ``[B, T]``, 1 for real tokens, 0 for padding.

    The field names are those of ``TokenizedData.select``'s dicts, so ``Batch(**d)`` converts one.
    """

    inputs: jax.Array
    targets: jax.Array
    loss_mask: jax.Array
    attention_mask: jax.Array

    @classmethod
    def of(cls, batch: Batch | Mapping[str, Any]) -> Batch:
        """A batch with the dtypes the compiled step expects, from a ``Batch`` or a ``TokenizedData`` dict."""
        fields = batch._asdict() if isinstance(batch, Batch) else batch
        return cls(
            inputs=jnp.asarray(fields["inputs"], jnp.int32),
            targets=jnp.asarray(fields["targets"], jnp.int32),
            loss_mask=jnp.asarray(fields["loss_mask"], jnp.float32),
            attention_mask=jnp.asarray(fields["attention_mask"], jnp.int32),
        )


def batch_schedule(data: TokenizedData, batch_size: int, *, seed: int) -> Callable[[int], Batch]:
    """Micro-batch ``i`` of shuffled epochs over ``data``, as a function of ``i`` alone.

    Each epoch is a fresh permutation seeded by ``(seed, epoch)``, so a resumed run sees exactly the batches an
    uninterrupted one would. A partial last batch of an epoch is skipped (one shape, one compilation).

    Raises:
        ValueError: ``batch_size`` outside ``1..len(data)``.
    """
    n = len(data)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the {n} examples")
    per_epoch = n // batch_size

    def get(i: int) -> Batch:
        epoch, k = divmod(i, per_epoch)
        order = np.random.default_rng((seed, epoch)).permutation(n)
        return Batch.of(data.select(order[k * batch_size:(k + 1) * batch_size]))

    return get


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        steps: optimizer updates (each over ``grad_accum`` micro-batches).
        learning_rate: peak learning rate.
        warmup_steps: linear warm-up from 0 (at most ``steps - 1``); then cosine decay to
            ``learning_rate · final_lr_fraction``.
        final_lr_fraction: where the cosine ends, relative to the peak.
        weight_decay: AdamW's decoupled weight decay.
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay.
        clip_norm: global gradient-norm clipping threshold.
        grad_accum: micro-batches per update (optax.MultiSteps).
        remat: recompute each block in the backward pass (cuts activation memory 2-3× at no speed cost on CPU).
        seed: seeds the dropout streams; with the data order and the adapter's init seed, fixes the run.
        checkpoint_every: write a step checkpoint every this many updates (0: only when stopped early).
        max_consecutive_nonfinite: stop early after this many non-finite updates in a row (the run is broken).
    """

    steps: int = 60
    learning_rate: float = 1e-3
    warmup_steps: int = 5
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0
    grad_accum: int = 1
    remat: bool = True
    seed: int = 0
    checkpoint_every: int = 0
    max_consecutive_nonfinite: int = 20

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError(f"steps {self.steps} and grad_accum {self.grad_accum} must be at least 1")
        if not self.learning_rate > 0 or self.warmup_steps < 0:
            raise ValueError(
                f"learning_rate {self.learning_rate} must be > 0 and warmup_steps {self.warmup_steps} >= 0"
            )

    def schedule(self) -> optax.Schedule:
        """The learning rate as a function of the update count."""
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=self.learning_rate,
            warmup_steps=min(self.warmup_steps, self.steps - 1),  # a short run still reaches its peak
            decay_steps=self.steps,
            end_value=self.learning_rate * self.final_lr_fraction,
        )


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback receives after every update."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    skipped_nonfinite: int
    elapsed_s: float


@dataclass(frozen=True)
class TrainResult:
    """The outcome of :func:`train`.

    Attributes:
        losses: training loss of every update done (mean over its micro-batches; NaN for skipped ones),
            including those done before a resume.
        skipped_nonfinite: updates skipped because the loss or a gradient was not finite.
        wall_time_s: wall time of this call, compilation included.
        compile_time_s: time to compile the step (once per call).
        step_times_s: wall time of each update of this call (after compilation).
        steps_done: updates done in all, including those before a resume.
        first_step: updates restored from the checkpoint this call resumed from (0: a fresh run).
        stopped_early: why the run ended before ``config.steps`` ("stop requested", "non-finite"), or None.
    """

    losses: tuple[float, ...]
    skipped_nonfinite: int
    wall_time_s: float
    compile_time_s: float
    step_times_s: tuple[float, ...]
    steps_done: int
    first_step: int = 0
    stopped_early: str | None = None


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip, AdamW on the warm-up/cosine schedule, skip non-finite updates; MultiSteps when accumulating.

    A non-finite micro-batch is dropped by MultiSteps (it would poison the accumulated sum); a non-finite update
    is dropped by ``apply_if_finite``. Neither touches the parameters.
    """
    inner = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(config.schedule(), b1=config.b1, b2=config.b2, weight_decay=config.weight_decay),
    )
    # The trainer decides when a run is broken (max_consecutive_nonfinite); optax must never apply a NaN update.
    opt = optax.apply_if_finite(inner, max_consecutive_errors=2**31 - 1)
    if config.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=config.grad_accum,
                               should_skip_update_fn=optax.skip_not_finite)
    return opt


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _loss(model: nnx.Module, batch: Batch, remat: bool) -> jax.Array:
    refresh_qnn_cores(model)  # weight-mode QTHA: every module's circuit in one batched, differentiable call
    logits = model(batch.inputs, attention_mask=batch.attention_mask, remat=remat, scan_layers=has_token_circuits(model))
    return causal_lm_loss(logits, batch.targets, batch.loss_mask)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(graphdef: nnx.GraphDef, config: TrainConfig, params, rng_state, opt_state, base, batch: Batch):
    """One micro-step. The structure and the config are static (hashable), so an equal model and config reuse
    the compiled program across ``train`` calls; all arrays, the frozen base included, are arguments."""
    model = nnx.merge(graphdef, params, rng_state, base)
    # nnx.value_and_grad on the merged model rather than jax.value_and_grad on the adapter state: the model's
    # per-block nnx.remat writes its variables back on exit, which nnx only allows for variables its own
    # transform created (jax.grad leaves the frozen base at the outer trace level, and nnx refuses).
    grad_fn = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, AdapterParam))
    loss, grads = grad_fn(model, batch, config.remat)
    updates, opt_state = make_optimizer(config).update(grads, opt_state, params)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    return optax.apply_updates(params, updates), nnx.state(model, nnx.RngState), opt_state, loss, finite


def _run_key(model: nnx.Module, config: TrainConfig) -> str:
    # Everything but the bookkeeping fields must match for a checkpoint to continue this run.
    fields = dataclasses.asdict(config)
    fields.pop("checkpoint_every")
    adapter = adapter_config(model)
    text = json.dumps({"train": fields, "adapter": repr(adapter)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _seed_rngs(rng_state: Any, seed: int) -> Any:
    root = jax.random.key(seed)
    leaves, treedef = jax.tree.flatten(rng_state)
    fresh = []
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            fresh.append(jax.random.fold_in(root, i))
        else:
            fresh.append(jnp.zeros_like(leaf))  # the stream's call counter
    return jax.tree.unflatten(treedef, fresh)


def _bar(progress: TrainProgress) -> None:
    width = 30
    done = int(width * progress.step / progress.total_steps)
    sys.stderr.write(
        f"\r[{'#' * done}{'.' * (width - done)}] {progress.step}/{progress.total_steps} "
        f"loss {progress.loss:.4f} lr {progress.learning_rate:.2e} {progress.elapsed_s:.0f}s"
    )
    if progress.step == progress.total_steps:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(
    model: nnx.Module,
    data: Sequence[Batch | Mapping[str, Any]] | Callable[[int], Batch | Mapping[str, Any]],
    config: TrainConfig,
    *,
    checkpoint: CheckpointWriter | None = None,
    resume_from: Path | str | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    progress_bar: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Trains the adapters of ``model`` in place; the base weights stay bitwise identical.

    Args:
        model: a model with adapters (``inject_adapters`` or ``load_adapter``).
        data: micro-batch ``i`` is ``data[i % len(data)]`` or ``data(i)`` (e.g. :func:`batch_schedule`), a
            :class:`Batch` or a ``TokenizedData.select`` dict, all of one shape (the step is compiled once).
            Indexing by the step makes a resumed run see the same batches as an uninterrupted one.
        config: the training hyperparameters.
        checkpoint: writes step checkpoints (every ``config.checkpoint_every`` updates, and when stopped early);
            None: none are written.
        resume_from: a directory a ``checkpoint`` writer filled: continue the run from it.
        progress: called after every update with a :class:`TrainProgress`.
        progress_bar: draw a text progress bar on stderr.
        should_stop: polled after every update; True checkpoints (if a writer is given) and returns early.

    Returns:
        A :class:`TrainResult`.

    Raises:
        model.adapters.AdapterError: the model has no adapters.
        TrainCheckpointError: ``resume_from`` is missing, corrupt, or a checkpoint of another run.
        ValueError: a batch has another shape than the first one.
    """
    started = time.perf_counter()
    opt = make_optimizer(config)
    schedule = config.schedule()
    run_key = _run_key(model, config)
    source = data if callable(data) else (lambda i: data[i % len(data)])

    def get_batch(i: int) -> Batch:
        return Batch.of(source(i))

    model.train()  # dropout on; restored to inference mode below whatever happens
    try:
        # flax annotates split's result as a variadic tuple; with three filters it is these four.
        graphdef, params, rng_state, base = nnx.split(model, AdapterParam, nnx.RngState, ...)  # type: ignore[misc]
        rng_state = _seed_rngs(rng_state, config.seed)
        opt_state = opt.init(params)
        step0, losses, skipped = 0, [], 0
        if resume_from is not None:
            ckpt = load_train_checkpoint(Path(resume_from), params=params, opt_state=opt_state,
                                         rng_state=rng_state, run_key=run_key)
            step0, losses, skipped = ckpt.step, list(ckpt.losses), ckpt.skipped
            params, opt_state, rng_state = ckpt.params, ckpt.opt_state, ckpt.rng_state

        first = get_batch(step0 * config.grad_accum)
        compile_start = time.perf_counter()
        compiled = _train_step.lower(graphdef, config, params, rng_state, opt_state, base, first).compile()
        compile_time = time.perf_counter() - compile_start

        def save(step: int) -> None:
            if checkpoint is not None:
                state = CheckpointState(step, params, opt_state, rng_state, tuple(losses), skipped, run_key)
                checkpoint(step, lambda directory: save_train_checkpoint(directory, state))

        step_times, stopped, consecutive = [], None, 0
        for step in range(step0, config.steps):
            t0 = time.perf_counter()
            micro_losses, step_finite = [], True
            for micro in range(config.grad_accum):
                batch = first if (step == step0 and micro == 0) else get_batch(step * config.grad_accum + micro)
                _check_shape(batch, first, step)
                params, rng_state, opt_state, loss, finite = compiled(params, rng_state, opt_state, base, batch)
                micro_losses.append(float(loss))
                step_finite &= bool(finite)
            step_times.append(time.perf_counter() - t0)
            losses.append(sum(micro_losses) / len(micro_losses) if step_finite else math.nan)
            skipped += not step_finite
            consecutive = 0 if step_finite else consecutive + 1
            if progress is not None or progress_bar:
                report = TrainProgress(step + 1, config.steps, losses[-1], float(schedule(step)), skipped,
                                       time.perf_counter() - started)
                if progress is not None:
                    progress(report)
                if progress_bar:
                    _bar(report)
            if consecutive >= config.max_consecutive_nonfinite:
                stopped = "non-finite"
            elif should_stop is not None and should_stop():
                stopped = "stop requested"
            done = step + 1
            if stopped or (config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps):
                save(done)
            if stopped:
                break
        nnx.update(model, params, rng_state)
        refresh_qnn_cores(model)  # the step computed P from the angles before the last update
    finally:
        model.eval()
    return TrainResult(
        losses=tuple(losses),
        skipped_nonfinite=skipped,
        wall_time_s=time.perf_counter() - started,
        compile_time_s=compile_time,
        step_times_s=tuple(step_times),
        steps_done=len(losses),
        first_step=step0,
        stopped_early=stopped,
    )


def _check_shape(batch: Batch, first: Batch, step: int) -> None:
    if batch.inputs.shape != first.inputs.shape:
        raise ValueError(
            f"the batch of step {step} has shape {tuple(batch.inputs.shape)} but the first had "
            f"{tuple(first.inputs.shape)}; pad every batch to one shape (the step is compiled once)"
        )
