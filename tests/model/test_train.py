"""Training: loss goes down for LoRA and both QTHA modes, only adapter weights move, non-finite steps are skipped
and counted, a resumed run equals an uninterrupted one, and the step compiles once."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from model.adapters import AdapterParam, LoraConfig, QthaAdapterConfig, inject_adapters
from model.data import TokenizedData
from model.lm import causal_lm_loss
from model.train import Batch, TrainConfig, batch_schedule, train
from model.train_state import TrainCheckpointError
from tests.model.adapter_helpers import counting_batches, shared_qnn, tiny_lm

TRAIN = counting_batches(12, seed=0)
HELD_OUT = counting_batches(2, seed=1)


def into(directory: str | Path, written: list[int] | None = None):  # type: ignore[no-untyped-def]
    """A checkpoint writer that keeps the newest checkpoint in one directory (and notes each step written)."""

    def write(step: int, fill) -> None:  # type: ignore[no-untyped-def]
        fill(Path(directory))
        if written is not None:
            written.append(step)

    return write


def held_out_loss(model: nnx.Module) -> float:
    return float(np.mean([causal_lm_loss(model(b.inputs), b.targets, b.loss_mask) for b in HELD_OUT]))


def adapter_values(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(nnx.state(model, AdapterParam))]


def base_values(model: nnx.Module) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize(
    ("config", "remat"),
    [
        (LoraConfig(rank=4), True),  # per-block remat covered once: it changes the program, not the result
        (QthaAdapterConfig(n_qubits=4, n_layers=1, qnn_mode="weight", bond_dim=4), False),
        (QthaAdapterConfig(n_qubits=4, n_layers=1, qnn_mode="activation", bond_dim=4), False),
    ],
    ids=["lora", "qtha-weight", "qtha-activation"],
)
def test_training_lowers_held_out_loss_and_moves_only_adapter_weights(config, remat: bool) -> None:
    lm = tiny_lm(layers=1)
    inject_adapters(lm, config, rngs=nnx.Rngs(1), qnn_factory=shared_qnn)
    base_before, adapters_before, loss_before = base_values(lm), adapter_values(lm), held_out_loss(lm)
    seen = []
    config = TrainConfig(steps=200, learning_rate=1e-2, warmup_steps=10, remat=remat)
    result = train(lm, TRAIN, config, progress=seen.append)
    loss_after = held_out_loss(lm)
    assert loss_after < 0.85 * loss_before, (loss_before, loss_after)
    assert result.steps_done == len(result.losses) == 200 and result.skipped_nonfinite == 0
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    assert [p.step for p in seen] == list(range(1, 201)) and seen[-1].loss == result.losses[-1]
    for before, after in zip(base_before, base_values(lm), strict=True):
        np.testing.assert_array_equal(before, after)  # the frozen base is bitwise identical
    assert all(not np.array_equal(b, a) for b, a in zip(adapters_before, adapter_values(lm), strict=True))


def _with_nan_mask(batch: Batch) -> Batch:
    return batch._replace(loss_mask=batch.loss_mask.at[0, 0].set(np.nan))


def test_a_non_finite_batch_is_skipped_and_counted_and_changes_nothing() -> None:
    constant = TrainConfig(steps=2, learning_rate=1e-2, warmup_steps=0, final_lr_fraction=1.0, remat=False)
    reference = tiny_lm(layers=1)
    inject_adapters(reference, LoraConfig(rank=4), rngs=nnx.Rngs(1))
    train(reference, TRAIN[:1], TrainConfig(**{**constant.__dict__, "steps": 1}))

    lm = tiny_lm(layers=1)
    inject_adapters(lm, LoraConfig(rank=4), rngs=nnx.Rngs(1))
    result = train(lm, [TRAIN[0], _with_nan_mask(TRAIN[1])], constant)
    assert result.skipped_nonfinite == 1 and result.steps_done == 2
    assert math.isfinite(result.losses[0]) and math.isnan(result.losses[1])
    for a, b in zip(adapter_values(lm), adapter_values(reference), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_of_only_non_finite_batches_stops_early() -> None:
    lm = tiny_lm(layers=1)
    inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(1))
    before = adapter_values(lm)
    result = train(lm, [_with_nan_mask(TRAIN[0])], TrainConfig(steps=50, max_consecutive_nonfinite=3, remat=False))
    assert result.stopped_early == "non-finite" and result.steps_done == 3 and result.skipped_nonfinite == 3
    for a, b in zip(before, adapter_values(lm), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one() -> None:
    # Dropout and gradient accumulation make the RNG streams and the MultiSteps state part of what must resume.
    adapter = LoraConfig(rank=4, dropout=0.1)
    config = TrainConfig(steps=6, learning_rate=1e-2, warmup_steps=2, grad_accum=2, remat=False, seed=3)
    whole = tiny_lm(layers=1)
    inject_adapters(whole, adapter, rngs=nnx.Rngs(1))
    uninterrupted = train(whole, TRAIN, config)

    with tempfile.TemporaryDirectory() as tmp:
        first = tiny_lm(layers=1)
        inject_adapters(first, adapter, rngs=nnx.Rngs(1))
        calls, written = [], []
        part = train(first, TRAIN, config, checkpoint=into(tmp, written),
                     should_stop=lambda: len(calls.append(0) or calls) >= 3)
        assert part.stopped_early == "stop requested" and part.steps_done == 3 and written == [3]

        second = tiny_lm(layers=1)
        inject_adapters(second, adapter, rngs=nnx.Rngs(1))
        resumed = train(second, TRAIN, config, resume_from=tmp)
    assert resumed.steps_done == 6 and resumed.first_step == 3 and len(resumed.step_times_s) == 3
    assert resumed.losses == uninterrupted.losses
    for a, b in zip(adapter_values(second), adapter_values(whole), strict=True):
        np.testing.assert_array_equal(a, b)
    # Dropout was on while training and is off again afterwards: inference is deterministic.
    x = TRAIN[0].inputs
    np.testing.assert_array_equal(np.asarray(whole(x)), np.asarray(whole(x)))


def test_a_checkpoint_of_another_run_or_a_corrupt_one_is_refused() -> None:
    config = TrainConfig(steps=2, remat=False, checkpoint_every=1)
    with tempfile.TemporaryDirectory() as tmp:
        lm = tiny_lm(layers=1)
        inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(1))
        written: list[int] = []
        train(lm, TRAIN, TrainConfig(steps=3, remat=False, checkpoint_every=1), checkpoint=into(tmp, written))
        assert written == [1, 2]  # every update but the last (the finished run is the result, not a checkpoint)
        other = tiny_lm(layers=1)
        inject_adapters(other, LoraConfig(rank=2), rngs=nnx.Rngs(1))
        with pytest.raises(TrainCheckpointError, match="another run"):
            train(other, TRAIN, TrainConfig(steps=3, learning_rate=0.5, remat=False), resume_from=tmp)
        tensors = Path(tmp) / "train_state.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:-8])
        with pytest.raises(TrainCheckpointError, match="train_state.safetensors does not match the sha256"):
            train(other, TRAIN, config, resume_from=tmp)
        with pytest.raises(TrainCheckpointError, match="no step checkpoint at .*missing"):
            train(other, TRAIN, config, resume_from=Path(tmp) / "absent")


def test_every_batch_must_have_the_first_batch_shape() -> None:
    lm = tiny_lm(layers=1)
    inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(1))
    short = counting_batches(1, seed=2, length=8)
    with pytest.raises(ValueError, match=r"step 1 has shape \(8, 8\) but the first had \(8, 16\)"):
        train(lm, [TRAIN[0], short[0]], TrainConfig(steps=2, remat=False))


def test_batch_schedule_covers_each_example_once_per_epoch_and_is_a_function_of_the_index() -> None:
    n, t = 10, 4
    ids = np.arange(n * t, dtype=np.int32).reshape(n, t)
    data = TokenizedData(ids, ids, np.ones((n, t), np.float32), np.ones((n, t), np.int32), 0, ())
    get = batch_schedule(data, 3, seed=7)
    epoch0 = np.concatenate([np.asarray(get(i).inputs[:, 0]) for i in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 full batches of 10 rows: 9 distinct rows, the tenth skipped
    np.testing.assert_array_equal(get(4).inputs, batch_schedule(data, 3, seed=7)(4).inputs)
    assert not np.array_equal(get(0).inputs, get(3).inputs)  # a fresh permutation in epoch 1
    with pytest.raises(ValueError, match="batch_size=11"):
        batch_schedule(data, 11, seed=0)


def test_progress_bar_draws_on_stderr(capsys) -> None:
    lm = tiny_lm(layers=1)
    inject_adapters(lm, LoraConfig(rank=2), rngs=nnx.Rngs(1))
    train(lm, TRAIN, TrainConfig(steps=2, remat=False), progress_bar=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "loss" in err


def test_accumulating_two_micro_batches_equals_one_update_on_both() -> None:
    a, b = TRAIN[0], TRAIN[1]
    both = Batch(*(np.concatenate([x, y]) for x, y in zip(a, b, strict=True)))
    config = TrainConfig(steps=2, learning_rate=1e-2, warmup_steps=0, remat=False)
    accumulated = tiny_lm(layers=1)
    inject_adapters(accumulated, LoraConfig(rank=2), rngs=nnx.Rngs(1))
    train(accumulated, [a, b, TRAIN[2], TRAIN[3]], TrainConfig(**{**config.__dict__, "grad_accum": 2}))
    single = tiny_lm(layers=1)
    inject_adapters(single, LoraConfig(rank=2), rngs=nnx.Rngs(1))
    both_next = Batch(*(np.concatenate([x, y]) for x, y in zip(TRAIN[2], TRAIN[3], strict=True)))
    train(single, [both, both_next], config)
    for x, y in zip(adapter_values(accumulated), adapter_values(single), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
