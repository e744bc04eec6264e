"""The training child stopped on request (what SIGTERM does) checkpoints where the cycle resumes from, and the
resumed run ends with the adapter an uninterrupted run gives, byte for byte (real child processes, tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

import policies
from agent.child.runner import ChildRunner
from agent.child.trainer import ChildTrainer
from agent.config import load_config
from agent.cycle.trainer import CycleInterrupted, checkpoint_step, latest_checkpoint
from tests.fixtures.tiny_model import write_tiny_hf

pytestmark = pytest.mark.slow

RECIPE = policies.Recipe("lora", None, 0, 0, 0, 2, 0.05, 60, "jax", batch_size=2, seq_len=128, seed=0)


def _trainer(tiny: Path, state: Path) -> ChildTrainer:
    config = load_config(None, state_dir=str(state), model={"source": str(tiny)})
    return ChildTrainer(config, ChildRunner())


def test_a_stopped_child_resumes_from_its_checkpoint_to_the_uninterrupted_adapter(tmp_path: Path) -> None:
    tiny = write_tiny_hf(tmp_path / "tiny")
    whole_dir = tmp_path / "whole" / "cycles" / "1"
    whole_dir.mkdir(parents=True)
    whole = _trainer(tiny, tmp_path / "whole").train(RECIPE, whole_dir, resume_from=None, parent_dir=None,
                                                     progress=lambda step, ckpt: None)

    trainer = _trainer(tiny, tmp_path / "cut")
    workdir = tmp_path / "cut" / "cycles" / "1"
    workdir.mkdir(parents=True)
    reported: list[tuple[int, Path | None]] = []

    def stop_at_three(step: int, ckpt: Path | None) -> None:
        reported.append((step, ckpt))
        if step == 3 and ckpt is None:
            trainer.runner.request_stop()  # SIGTERM to the child, as the daemon sends on shutdown

    with pytest.raises(CycleInterrupted):
        trainer.train(RECIPE, workdir, resume_from=None, parent_dir=None, progress=stop_at_three)
    newest = latest_checkpoint(workdir)
    assert newest is not None and 3 <= checkpoint_step(newest) < 60
    # Checkpoints are reported as they are written, in the one layout the cycle reads (no second copy).
    assert (checkpoint_step(newest), newest) in reported
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "child"]
    assert sorted(p.name for p in newest.iterdir()) == ["train_state.json", "train_state.safetensors"]

    restarted = _trainer(tiny, tmp_path / "cut")  # a stopped runner starts no more children: the daemon restarts
    resumed = restarted.train(RECIPE, workdir, resume_from=newest, parent_dir=None, progress=lambda step, ckpt: None)
    assert resumed.steps == whole.steps == 60
    assert resumed.metrics["train_loss_final"] == whole.metrics["train_loss_final"]
    weights = "adapter.safetensors"
    assert (resumed.artifact_dir / weights).read_bytes() == (whole.artifact_dir / weights).read_bytes()
