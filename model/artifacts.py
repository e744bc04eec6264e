"""Adapter artifacts: the adapter alone, as ``adapter.safetensors`` plus an ``adapter.json`` manifest (kind,
config, targets, shapes, the circuit as cirq JSON, the base model's fingerprint, format version).

The base model is not saved: an adapter is only meaningful on the exact base it was trained on, which the
fingerprint pins. Weights are safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cirq
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from quantum import build_circuit

from .adapters import (
    AdapterConfig,
    AdapterError,
    AdapterParam,
    LoraConfig,
    QthaAdapterConfig,
    adapted_modules,
    adapter_config,
    count_adapter_params,
    inject_adapters,
    qtha_circuit_spec,
    refresh_qnn_cores,
)

__all__ = [
    "ADAPTER_FORMAT_VERSION",
    "AdapterArtifactError",
    "AdapterFingerprintError",
    "adapter_matches",
    "load_adapter",
    "read_adapter_manifest",
    "save_adapter",
]

ADAPTER_FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
MANIFEST_FILE = "adapter.json"
_CONFIGS: dict[str, type[LoraConfig] | type[QthaAdapterConfig]] = {"lora": LoraConfig, "qtha": QthaAdapterConfig}


class AdapterArtifactError(AdapterError):
    """An adapter artifact is missing, corrupt, of an unknown format, or does not fit the model."""


class AdapterFingerprintError(AdapterArtifactError):
    """An adapter was trained on another base model than the one it is being loaded onto."""


def _tensors(model: nnx.Module) -> dict[str, Any]:
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model, AdapterParam))}


def _config_json(config: AdapterConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _config_from_json(kind: str, fields: dict[str, Any], where: Path) -> AdapterConfig:
    cls = _CONFIGS.get(kind)
    if cls is None:
        raise AdapterArtifactError(f"{where}: unknown adapter kind {kind!r}; this version reads {sorted(_CONFIGS)}")
    # JSON has lists where the frozen configs have tuples.
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise AdapterArtifactError(f"{where}: the adapter config is invalid: {exc}") from None


def save_adapter(model: nnx.Module, directory: Path | str, *, base_fingerprint: str) -> Path:
    """Writes the model's adapter (not the base) into ``directory``.

    Args:
        model: a model with adapters.
        directory: created if needed; ``adapter.safetensors`` and ``adapter.json`` are written into it.
        base_fingerprint: the base model's fingerprint (``LoadedModel.fingerprint``); loading checks it.

    Returns:
        The manifest's path.

    Raises:
        AdapterError: the model has no adapters.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = adapter_config(model)
    tensors = {name: np.asarray(var.get_value()) for name, var in _tensors(model).items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "qtha-adapter"})
    circuit = None
    if isinstance(config, QthaAdapterConfig):
        spec = qtha_circuit_spec(config)
        circuit = {"spec": dataclasses.asdict(spec), "cirq_json": cirq.to_json(build_circuit(spec).circuit)}
    counts = count_adapter_params(model)
    manifest = {
        "format": "qtha-adapter",
        "format_version": ADAPTER_FORMAT_VERSION,
        "kind": config.kind,
        "config": _config_json(config),
        "targets": {path: [m.in_features, m.out_features] for path, m in adapted_modules(model).items()},
        "shapes": {name: list(array.shape) for name, array in sorted(tensors.items())},
        "param_counts": {"per_module": dict(counts.per_module), "total": counts.total},
        "circuit": circuit,
        "base_fingerprint": base_fingerprint,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest(),
    }
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def read_adapter_manifest(directory: Path | str) -> dict[str, Any]:
    """The manifest of the adapter in ``directory``, checked for format and version.

    Raises:
        AdapterArtifactError: missing, not JSON, or another format or version.
    """
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterArtifactError(f"no adapter at {directory}: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterArtifactError(f"{path} is not valid JSON ({exc}); the adapter artifact is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "qtha-adapter":
        raise AdapterArtifactError(f"{path} is not a qtha adapter manifest")
    version = manifest.get("format_version")
    if version != ADAPTER_FORMAT_VERSION:
        raise AdapterArtifactError(
            f"{path} has format_version {version!r}; this version of qtha reads {ADAPTER_FORMAT_VERSION}"
        )
    return manifest


def adapter_matches(manifest: Mapping[str, Any], wanted: AdapterConfig, *, base_fingerprint: str) -> bool:
    """Whether a saved adapter (its manifest, :func:`read_adapter_manifest`) is ``wanted`` on this base: the same
    base fingerprint, kind and config. ``wanted.bond_dim = None`` (resolved when injected) accepts the saved one.

    Raises:
        AdapterArtifactError: the manifest's config is invalid.
    """
    if manifest.get("base_fingerprint") != base_fingerprint or manifest.get("kind") != wanted.kind:
        return False
    saved = _config_from_json(wanted.kind, dict(manifest.get("config", {})), Path(MANIFEST_FILE))
    if isinstance(wanted, QthaAdapterConfig) and isinstance(saved, QthaAdapterConfig) and wanted.bond_dim is None:
        saved = dataclasses.replace(saved, bond_dim=None)
    return saved == wanted


def load_adapter(
    model: nnx.Module,
    directory: Path | str,
    *,
    base_fingerprint: str,
    qnn_factory: Callable[..., Any] | None = None,
) -> AdapterConfig:
    """Injects the adapter saved in ``directory`` into ``model`` (a fresh base, in place) with its weights.

    Args:
        model: the base model, without adapters.
        directory: what :func:`save_adapter` wrote.
        base_fingerprint: this base model's fingerprint; it must equal the one the adapter was trained on.
        qnn_factory: QTHA only: another QNN backend (see ``inject_adapters``).

    Returns:
        The adapter's config.

    Raises:
        AdapterFingerprintError: the adapter belongs to another base (the message names both fingerprints).
        AdapterArtifactError: missing or corrupt files, or tensors that do not fit the model.
    """
    directory = Path(directory)
    manifest = read_adapter_manifest(directory)
    if manifest.get("base_fingerprint") != base_fingerprint:
        raise AdapterFingerprintError(
            f"the adapter in {directory} was trained on base model {manifest.get('base_fingerprint')} but this "
            f"model's fingerprint is {base_fingerprint}; load it onto the base it was trained on"
        )
    weights = directory / WEIGHTS_FILE
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise AdapterArtifactError(f"no adapter weights at {weights}") from None
    if hashlib.sha256(data).hexdigest() != manifest.get("weights_sha256"):
        raise AdapterArtifactError(f"{weights} does not match the sha256 in its manifest; the artifact is corrupt")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise AdapterArtifactError(f"{weights} is not a readable safetensors file: {exc}") from None
    config = _config_from_json(manifest.get("kind", ""), manifest.get("config", {}), directory / MANIFEST_FILE)
    inject_adapters(model, config, rngs=nnx.Rngs(0), qnn_factory=qnn_factory)
    variables = _tensors(model)
    if set(variables) != set(tensors):
        missing, extra = sorted(set(variables) - set(tensors)), sorted(set(tensors) - set(variables))
        raise AdapterArtifactError(
            f"{weights} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, var in variables.items():
        value = tensors[name]
        if value.shape != var.get_value().shape:
            raise AdapterArtifactError(
                f"{weights}: {name} has shape {list(value.shape)} but the model needs {list(var.get_value().shape)}"
            )
        var.set_value(jnp.asarray(value, jnp.float32))
    refresh_qnn_cores(model)
    return config
