"""The fine-tuning entry: a run stopped and resumed from its checkpoint equals an uninterrupted one, the adapter is
saved only when the run completes, and a saved adapter is continued only when it is the one asked for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from model import (
    AdapterParam,
    FinetuneConfig,
    LoraConfig,
    QthaAdapterConfig,
    TrainConfig,
    adapter_matches,
    batch_schedule,
    causal_lm_loss,
    finetune,
    generate_math_problems,
    inject_adapters,
    load_adapter,
    load_checkpoint,
    read_adapter_manifest,
    save_adapter,
    tokenize_examples,
)
from tests.fixtures.tiny_model import write_tiny_hf
from tests.model.adapter_helpers import shared_qnn

LORA = FinetuneConfig(LoraConfig(rank=2), TrainConfig(steps=5, learning_rate=1e-2, warmup_steps=1, remat=False,
                                                      seed=3, checkpoint_every=2), batch_size=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf(tmp_path_factory.mktemp("tiny") / "m", seed=0)


@pytest.fixture(scope="module")
def data(source: Path):  # type: ignore[no-untyped-def]
    problems = generate_math_problems(12, split="train", seed=0, steps=(1,))
    return tokenize_examples(load_checkpoint(source).tokenizer, [p.as_example() for p in problems], seq_len=96)


def adapter_values(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(v.get_value()) for _, v in sorted(nnx.to_flat_state(nnx.state(model, AdapterParam)))]


def test_a_stopped_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(source: Path, data, tmp_path: Path
                                                                              ) -> None:  # type: ignore[no-untyped-def]
    whole = finetune(load_checkpoint(source), data, LORA, out=tmp_path / "whole")
    assert whole.adapter_dir == tmp_path / "whole" and (tmp_path / "whole" / "adapter.json").exists()

    written: dict[int, Path] = {}

    def writer(step: int, fill) -> None:  # type: ignore[no-untyped-def]
        written[step] = tmp_path / f"ckpt-{step}"
        fill(written[step])

    steps: list[int] = []
    stopped = finetune(load_checkpoint(source), data, LORA, checkpoint=writer, out=tmp_path / "part",
                       progress=lambda p: steps.append(p.step), should_stop=lambda: len(steps) >= 3)
    assert stopped.train.stopped_early == "stop requested" and stopped.adapter_dir is None
    assert sorted(written) == [2, 3] and not (tmp_path / "part").exists()  # every 2 steps, and where it stopped

    loaded = load_checkpoint(source)
    resumed = finetune(loaded, data, LORA, resume_from=written[3], out=tmp_path / "resumed")
    assert (resumed.train.first_step, resumed.train.steps_done) == (3, 5)
    assert resumed.train.losses == whole.train.losses
    again = load_checkpoint(source)
    load_adapter(again.model, tmp_path / "whole", base_fingerprint=again.fingerprint)
    for a, b in zip(adapter_values(loaded.model), adapter_values(again.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_saved_adapter_is_continued_only_when_it_is_the_one_asked_for(source: Path, data, tmp_path: Path
                                                                       ) -> None:  # type: ignore[no-untyped-def]
    first = finetune(load_checkpoint(source), data, LORA, out=tmp_path / "champion")
    warm = finetune(load_checkpoint(source), data, LORA, warm_start=first.adapter_dir)
    assert warm.warm_start
    # Its first update started from the saved weights: the loss of step 1 is the saved adapter's on batch 0.
    saved = load_checkpoint(source)
    load_adapter(saved.model, tmp_path / "champion", base_fingerprint=saved.fingerprint)
    batch = batch_schedule(data, LORA.batch_size, seed=LORA.train.seed)(0)
    expected = float(causal_lm_loss(saved.model(batch.inputs, attention_mask=batch.attention_mask), batch.targets,
                                    batch.loss_mask))
    assert warm.train.losses[0] == pytest.approx(expected, rel=1e-5)
    assert warm.train.losses[0] != pytest.approx(first.train.losses[0], rel=1e-3)

    other = dataclasses.replace(LORA, adapter=LoraConfig(rank=3))
    assert not finetune(load_checkpoint(source), data, other, warm_start=first.adapter_dir).warm_start
    assert not finetune(load_checkpoint(source), data, LORA, warm_start=tmp_path / "no-adapter").warm_start


def test_a_saved_adapter_matches_its_own_config_and_base_only(source: Path, tmp_path: Path) -> None:
    loaded = load_checkpoint(source)
    config = QthaAdapterConfig(n_qubits=4, n_layers=1, qnn_mode="weight")
    used = inject_adapters(loaded.model, config, rngs=nnx.Rngs(0), qnn_factory=shared_qnn)
    save_adapter(loaded.model, tmp_path / "a", base_fingerprint=loaded.fingerprint)
    manifest = read_adapter_manifest(tmp_path / "a")
    fingerprint = loaded.fingerprint
    assert used.bond_dim is not None
    assert adapter_matches(manifest, config, base_fingerprint=fingerprint)  # bond dimension None: the resolved one
    assert adapter_matches(manifest, used, base_fingerprint=fingerprint)
    assert not adapter_matches(manifest, used.with_bond_dim(used.bond_dim + 1), base_fingerprint=fingerprint)
    assert not adapter_matches(manifest, dataclasses.replace(config, n_layers=2), base_fingerprint=fingerprint)
    assert not adapter_matches(manifest, dataclasses.replace(config, targets=("q_proj",)), base_fingerprint=fingerprint)
    assert not adapter_matches(manifest, LoraConfig(), base_fingerprint=fingerprint)
    assert not adapter_matches(manifest, config, base_fingerprint="another base")
