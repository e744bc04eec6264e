"""``finetune``: the one fine-tuning entry of the tree — adapter in (fresh, or continued from a saved one), trained
with step checkpoints, saved. The daemon's child, ``bench/quality.py`` and the tests call it alike, so a number in
a report comes from the run the daemon would make."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from .adapters import AdapterConfig, ParamCounts, adapter_config, count_adapter_params, inject_adapters
from .artifacts import MANIFEST_FILE, adapter_matches, load_adapter, read_adapter_manifest, save_adapter
from .checkpoint import LoadedModel
from .data import TokenizedData
from .train import CheckpointWriter, TrainConfig, TrainProgress, TrainResult, batch_schedule, train

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune and how.

    Attributes:
        adapter: the adapter to train (a fresh one is initialised from ``train.seed``).
        train: the optimisation; ``train.seed`` also seeds the adapter's initialisation and the batch order.
        batch_size: examples per micro-batch (shuffled epochs, :func:`model.batch_schedule`).
    """

    adapter: AdapterConfig
    train: TrainConfig
    batch_size: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"FinetuneConfig.batch_size = {self.batch_size} must be at least 1")


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        train: the training run (losses, timings, steps, why it stopped early).
        adapter: the adapter's config as trained (QTHA: the bond dimension resolved).
        params: its trainable parameters, per module and in total.
        warm_start: the adapter continued from ``warm_start``'s weights rather than a fresh initialisation.
        adapter_dir: where the trained adapter was saved; None when no ``out`` was given or the run stopped early.
    """

    train: TrainResult
    adapter: AdapterConfig
    params: ParamCounts
    warm_start: bool
    adapter_dir: Path | None


def finetune(
    loaded: LoadedModel,
    data: TokenizedData,
    config: FinetuneConfig,
    *,
    qnn_factory: Callable[..., Any] | None = None,
    warm_start: Path | None = None,
    checkpoint: CheckpointWriter | None = None,
    resume_from: Path | None = None,
    out: Path | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinetuneResult:
    """Injects ``config.adapter`` into ``loaded.model`` (in place), trains it on ``data`` and saves it.

    Args:
        loaded: the base model (without adapters) and its fingerprint; ``loaded.model`` is changed in place (pass
            a copy, ``dataclasses.replace(loaded, model=nnx.clone(loaded.model))``, to keep the base).
        data: the training rows; micro-batch ``i`` is a function of ``i`` and ``train.seed`` alone, so a resumed
            run sees the batches an uninterrupted one would.
        config: adapter, training hyperparameters, batch size.
        qnn_factory: QTHA only: the QNN backend (see :func:`model.inject_adapters`; default the JAX simulator).
        warm_start: a saved adapter directory; when it holds ``config.adapter`` trained on this base, training
            continues from its weights, otherwise (or when it holds no adapter) the adapter starts fresh.
        checkpoint: writes step checkpoints (see :data:`model.train.CheckpointWriter`).
        resume_from: a checkpoint directory ``checkpoint`` filled earlier: continue that run.
        out: save the trained adapter here (replacing what is there) when the run completes.
        progress: called after every update.
        should_stop: polled after every update; True checkpoints and returns (``result.train.stopped_early``).

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        ValueError: ``config.batch_size`` exceeds the rows of ``data``.
        model.adapters.AdapterError: the adapter does not fit the model, or the model already has one.
        model.TrainCheckpointError: ``resume_from`` is missing, corrupt, or of another run.

    Example:
        >>> run = finetune(loaded, data, FinetuneConfig(LoraConfig(rank=4), TrainConfig(steps=20), batch_size=4))
        >>> run.train.losses[-1], run.params.total
    """
    seed = config.train.seed
    schedule = batch_schedule(data, config.batch_size, seed=seed)  # refuses a batch larger than the data first
    warm = (
        warm_start is not None
        and (warm_start / MANIFEST_FILE).exists()
        and adapter_matches(read_adapter_manifest(warm_start), config.adapter, base_fingerprint=loaded.fingerprint)
    )
    if warm and warm_start is not None:
        load_adapter(loaded.model, warm_start, base_fingerprint=loaded.fingerprint, qnn_factory=qnn_factory)
    else:
        inject_adapters(loaded.model, config.adapter, rngs=nnx.Rngs(params=seed, dropout=seed),
                        qnn_factory=qnn_factory)
    result = train(loaded.model, schedule, config.train, checkpoint=checkpoint, resume_from=resume_from,
                   progress=progress, should_stop=should_stop)
    saved = None
    if out is not None and result.stopped_early is None:
        shutil.rmtree(out, ignore_errors=True)  # no file of an earlier attempt may outlive this adapter
        save_adapter(loaded.model, out, base_fingerprint=loaded.fingerprint)
        saved = out
    return FinetuneResult(
        train=result,
        adapter=adapter_config(loaded.model),
        params=count_adapter_params(loaded.model),
        warm_start=warm,
        adapter_dir=saved,
    )
