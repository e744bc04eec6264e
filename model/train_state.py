"""Step checkpoints of a training run: adapter weights, optimizer state and dropout streams in one safetensors
file, the step and run metadata in a JSON file beside it. No pickle: the optimizer state is flattened to its
leaves in a fixed order and rebuilt on the structure a fresh ``optimizer.init`` gives."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

__all__ = ["CHECKPOINT_FORMAT", "CheckpointState", "TrainCheckpointError", "load_train_checkpoint",
           "save_train_checkpoint"]

CHECKPOINT_FORMAT = 1
_TENSORS = "train_state.safetensors"
_META = "train_state.json"


class TrainCheckpointError(ValueError):
    """A step checkpoint is missing, corrupt, or belongs to a different run; the message names the file."""


@dataclass(frozen=True)
class CheckpointState:
    """A training run's resumable state (host arrays)."""

    step: int
    params: Any
    opt_state: Any
    rng_state: Any
    losses: tuple[float, ...]
    skipped: int
    run_key: str


def _flat(prefix: str, state: Any) -> dict[str, np.ndarray]:
    out = {}
    for i, leaf in enumerate(jax.tree.leaves(state)):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # typed PRNG keys are stored as their raw uint32 data
        out[f"{prefix}/{i:06d}"] = np.asarray(leaf)
    return out


def _unflat(prefix: str, tensors: dict[str, np.ndarray], template: Any, where: Path) -> Any:
    leaves, treedef = jax.tree.flatten(template)
    names = sorted(k for k in tensors if k.startswith(prefix + "/"))
    if len(names) != len(leaves):
        raise TrainCheckpointError(
            f"{where}: {prefix} has {len(names)} tensors but this run's state has {len(leaves)}; the checkpoint "
            "comes from a different adapter or optimizer configuration"
        )
    restored = []
    for name, leaf in zip(names, leaves, strict=True):
        value = tensors[name]
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            restored.append(jax.random.wrap_key_data(jnp.asarray(value), impl=jax.random.key_impl(leaf)))
            continue
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise TrainCheckpointError(
                f"{where}: {name} is {value.dtype}{list(value.shape)} but the run expects "
                f"{leaf.dtype}{list(leaf.shape)}; the checkpoint comes from a different configuration"
            )
        restored.append(jnp.asarray(value))
    return jax.tree.unflatten(treedef, restored)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_train_checkpoint(directory: Path, state: CheckpointState) -> Path:
    """Writes the checkpoint into ``directory`` (created if needed), replacing the previous one atomically.

    The tensors are written first and the JSON, which carries their sha256, last: a crash in between leaves a
    JSON that does not match and is refused rather than a silent mix of two steps.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {**_flat("params", state.params), **_flat("opt", state.opt_state), **_flat("rng", state.rng_state)}
    tmp = directory / (_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    data = tmp.read_bytes()
    os.replace(tmp, directory / _TENSORS)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": state.step,
        "losses": list(state.losses),
        "skipped_nonfinite": state.skipped,
        "run_key": state.run_key,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic_write(directory / _META, json.dumps(meta, indent=1).encode())
    return directory


def load_train_checkpoint(directory: Path, *, params: Any, opt_state: Any, rng_state: Any,
                          run_key: str) -> CheckpointState:
    """Reads a checkpoint written by :func:`save_train_checkpoint` onto this run's state structures.

    Args:
        directory: the checkpoint directory.
        params: adapter state of this run (structure and shapes to restore onto).
        opt_state: a fresh optimizer state of this run.
        rng_state: the model's RNG state.
        run_key: the run's identity (adapter and training configs); a checkpoint of another run is refused.

    Raises:
        TrainCheckpointError: missing or corrupt files, another run's checkpoint, or mismatched shapes.
    """
    meta_path, tensor_path = directory / _META, directory / _TENSORS
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = tensor_path.read_bytes()
    except FileNotFoundError as exc:
        raise TrainCheckpointError(f"no step checkpoint at {directory}: {exc.filename} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrainCheckpointError(f"{meta_path} is not valid JSON ({exc}); the checkpoint is corrupt") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainCheckpointError(f"{meta_path} has format {meta.get('format')!r}; expected {CHECKPOINT_FORMAT}")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise TrainCheckpointError(f"{tensor_path} does not match the sha256 in {meta_path}; the checkpoint is corrupt")
    if meta.get("run_key") != run_key:
        raise TrainCheckpointError(
            f"{directory} belongs to another run (its configs differ from this one's); resume with the same adapter "
            "and training configuration or start afresh"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise TrainCheckpointError(f"{tensor_path} is not a readable safetensors file: {exc}") from None
    return CheckpointState(
        step=int(meta["step"]),
        params=_unflat("params", tensors, params, tensor_path),
        opt_state=_unflat("opt", tensors, opt_state, tensor_path),
        rng_state=_unflat("rng", tensors, rng_state, tensor_path),
        losses=tuple(float(x) for x in meta["losses"]),
        skipped=int(meta["skipped_nonfinite"]),
        run_key=run_key,
    )

