"""Pieces of the child's model-backed tasks that need no model: recipe → adapter and training configs, backends,
the held-out set. (Whether a saved adapter is continued: tests/model/test_finetune.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import policies
from agent.child.tasks import (
    _heldout,
    _qnn_backend,
    _quantum_event,
    _train_config,
    _training_examples,
    adapter_config_for,
)

QTHA = policies.Recipe("qtha", "weight", 6, 3, 2, 0, 1e-2, 10, "jax", targets=("q_proj", "v_proj"))


def test_recipe_to_adapter_config() -> None:
    config = adapter_config_for(dataclasses.replace(QTHA, targets=("q_proj",)))
    assert (config.kind, config.n_qubits, config.n_layers, config.bond_dim, config.qnn_mode) == (
        "qtha",
        6,
        3,
        2,
        "weight",
    )
    assert config.targets == ("q_proj",)
    lora = adapter_config_for(policies.Recipe("lora", None, 0, 0, 0, 12, 1e-3, 10, "jax", targets=("v_proj",)))
    assert (lora.kind, lora.rank, lora.alpha, lora.targets) == ("lora", 12, 24.0, ("v_proj",))
    activation = adapter_config_for(dataclasses.replace(QTHA, qnn_mode="activation", qubits=5))
    assert activation.n_qubits == 5


def test_the_child_refuses_a_malformed_recipe_naming_the_field(tmp_path: Path) -> None:
    """The recipe is parsed, not read with defaults: an odd weight-mode qubit count or a stray key is refused
    before any model is loaded (the old child silently rounded 5 qubits up to 6)."""
    from agent.child.tasks import train

    base = {"workdir": str(tmp_path / "cycles" / "1"), "jax_cache_dir": str(tmp_path / "jax")}
    for bad, field in [({"qubits": 5}, "qubits"), ({"lr": 0.1}, "lr"), ({"steps": "ten"}, "steps")]:
        with pytest.raises(policies.PolicyInputError, match=field):
            train(base | {"recipe": QTHA.to_dict() | bad}, None)  # type: ignore[arg-type]


def test_recipe_to_finetune_config() -> None:
    config = _train_config(dataclasses.replace(QTHA, steps=12, seed=7, batch_size=2))
    assert (config.batch_size, config.train.seed, config.train.steps, config.train.learning_rate) == (2, 7, 12, 1e-2)
    assert (config.train.warmup_steps, config.train.checkpoint_every) == (3, 2)  # a quarter, a sixth of the steps
    assert config.adapter == adapter_config_for(QTHA)


def test_backends_by_name() -> None:
    import quantum
    from agent.config import load_config

    assert _qnn_backend("jax", {}) == (None, None)
    assert isinstance(_qnn_backend("qsim", {})[0], quantum.QsimBackend)
    section = load_config(None, quantum={"shots": 200}).quantum.model_dump(mode="json")
    emulator, rule = _qnn_backend("emulator", {"quantum": section})
    assert isinstance(emulator, quantum.OfflineGuard) and emulator.repetitions == 200
    assert isinstance(emulator.device, quantum.ExecutorBackend) and rule == quantum.ParameterShift()
    with pytest.raises(ValueError, match="unknown quantum backend 'wukong'"):
        _qnn_backend("wukong", {})
    # The simulator reports the circuits it ran; an executor reports its own counters (none yet here).
    assert _quantum_event(None, "jax", 120) == {
        "event": "quantum",
        "backend": "jax",
        "circuits": 120,
        "shots": 0,
    }
    event = _quantum_event(emulator, "emulator", 120)
    assert (event["circuits"], event["shots"], event["errors"]) == (0, 0, {})


def test_heldout_sets_are_fixed_and_disjoint_from_training(tmp_path) -> None:  # type: ignore[no-untyped-def]
    payload = {
        "task": "maths", "data_seed": 0, "eval_examples": 12, "dataset_dir": str(tmp_path), "heldout_fraction": 0.0
    }
    first, again = _heldout(payload), _heldout(payload)
    assert [e.example_id for e in first] == [e.example_id for e in again] and len(first) == 12
    # The slice leads the id (the gate reads it back from bare scores) and every problem has its answer.
    assert all(e.answer is not None and e.example_id.split("/", 1)[0] == e.slice for e in first)
    assert all(e.slice.startswith("steps") for e in first)
    train = _training_examples(payload, "3", 50)
    heldout_prompts = {e.prompt for e in first}
    assert len(train) == 50 and not heldout_prompts & {e.prompt for e in train}
    (tmp_path / "x.jsonl").write_text('{"prompt": "inbox question", "answer": "6 * 7 = 42. The answer is 42."}\n'
                                      '{"prompt": "bare question", "answer": "42"}\n')
    trained = _training_examples(payload, "3", 50)
    assert trained[0].response == "6 * 7 = 42. The answer is 42."  # ingested data joins the training set
    # ...but a final answer without working is no solution to copy: a self-improvement prompt instead.
    assert "bare question" not in {e.prompt for e in trained} and len(trained) == 51
    dialogue = _heldout({**payload, "task": "dialogue", "eval_examples": 5})
    assert [e.example_id for e in dialogue] == [f"dialogue/{i:04d}" for i in range(5)]
    assert all(e.answer is None for e in dialogue)
