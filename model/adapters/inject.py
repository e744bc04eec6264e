"""Putting adapters into a model: find the target linear layers by name, wrap each with its adapter, and count
the trainable parameters (measured on a model, or predicted from a config and the layers' shapes)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
from flax import nnx

from quantum import make_qnn

from .base import AdaptedLinear, AdapterError, AdapterParam
from .lora import LoraAdapter, LoraConfig, lora_param_count
from .qtha import QthaAdapter, QthaAdapterConfig, qtha_circuit_spec, qtha_param_count, resolve_bond_dim

__all__ = [
    "AdapterConfig",
    "ParamCounts",
    "adapted_modules",
    "adapter_config",
    "adapter_param_counts",
    "count_adapter_params",
    "inject_adapters",
    "target_shapes",
]

AdapterConfig = LoraConfig | QthaAdapterConfig


@dataclass(frozen=True)
class ParamCounts:
    """Trainable adapter parameters.

    Attributes:
        per_module: module path (e.g. ``layers.0.self_attn.q_proj``) → parameters of its adapter.
        total: their sum.
    """

    per_module: Mapping[str, int]
    total: int

    @classmethod
    def of(cls, per_module: Mapping[str, int]) -> ParamCounts:
        return cls(per_module=dict(sorted(per_module.items())), total=sum(per_module.values()))


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


def _matches(path: tuple[Any, ...], pattern: str) -> bool:
    # A bare name ("q_proj") matches that attribute anywhere; a dotted glob ("layers.1*.self_attn.q_proj") matches
    # the full path.
    return str(path[-1]) == pattern or fnmatch.fnmatchcase(_dotted(path), pattern)


def _linear_layers(model: nnx.Module) -> list[tuple[tuple[Any, ...], nnx.Linear]]:
    return [(tuple(path), node) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)]


def _targets(model: nnx.Module, targets: tuple[str, ...]) -> list[tuple[tuple[Any, ...], nnx.Linear]]:
    if any(isinstance(node, AdaptedLinear) for _, node in nnx.iter_graph(model)):
        raise AdapterError("the model already has adapters; load a fresh base model to inject new ones")
    linears = _linear_layers(model)
    found = [(path, node) for path, node in linears if any(_matches(path, p) for p in targets)]
    for pattern in targets:
        if not any(_matches(path, pattern) for path, _ in linears):
            names = sorted({str(path[-1]) for path, _ in linears})
            raise AdapterError(f"adapter target {pattern!r} matches no linear layer; the model's are {names}")
    return found


def target_shapes(model: nnx.Module, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Module path → (d_in, d_out) of every linear layer the patterns select.

    Raises:
        AdapterError: a pattern matches nothing (the message lists the model's layer names).
    """
    return {_dotted(path): (node.in_features, node.out_features) for path, node in _targets(model, targets)}


def _set_child(model: nnx.Module, path: tuple[Any, ...], value: nnx.Module) -> None:
    parent: Any = model
    for part in path[:-1]:
        parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def inject_adapters(
    model: nnx.Module,
    config: AdapterConfig,
    *,
    rngs: nnx.Rngs,
    qnn_factory: Callable[..., Any] | None = None,
) -> AdapterConfig:
    """Wraps every target linear layer of ``model`` (in place) with a fresh adapter.

    The base weights are untouched; only ``AdapterParam`` variables are new, so
    ``nnx.split(model, AdapterParam, ...)`` separates what trains from what stays frozen. A fresh adapter is a
    no-op: the model's outputs are unchanged.

    Args:
        model: the base model; its target layers must be ``nnx.Linear`` (kernel ``[d_in, d_out]``).
        config: ``LoraConfig`` or ``QthaAdapterConfig``; its ``targets`` select the layers.
        rngs: initialisation (``params``) and dropout streams; the same seed gives the same adapter.
        qnn_factory: QTHA only: builds the QNN from a ``quantum.CircuitSpec`` (default ``quantum.make_qnn``, the
            JAX simulator; e.g. ``functools.partial(make_qnn, backend=...)`` for another backend). Called once:
            all adapted modules share the function.

    Returns:
        The config actually used (QTHA: with the bond dimension resolved), as saved with the adapter.

    Raises:
        AdapterError: a target matches nothing, the model already has adapters, or the config does not fit a
            layer's shape.

    Example:
        >>> used = inject_adapters(lm, QthaAdapterConfig(n_qubits=4, n_layers=2), rngs=nnx.Rngs(0))
        >>> count_adapter_params(lm).total
    """
    found = _targets(model, config.targets)
    qnn = None
    if isinstance(config, QthaAdapterConfig):
        shapes = {_dotted(path): (node.in_features, node.out_features) for path, node in found}
        config = config.with_bond_dim(resolve_bond_dim(config, shapes))
        qnn = (qnn_factory or make_qnn)(qtha_circuit_spec(config))
    elif not isinstance(config, LoraConfig):
        raise AdapterError(f"unknown adapter config {type(config).__name__}; use LoraConfig or QthaAdapterConfig")
    for path, node in found:
        if isinstance(config, LoraConfig):
            delta: nnx.Module = LoraAdapter(node.in_features, node.out_features, config, rngs=rngs)
        else:
            delta = QthaAdapter(node.in_features, node.out_features, config, rngs=rngs, qnn=qnn, where=_dotted(path))
        _set_child(model, path, AdaptedLinear(node, delta, config))
    return config


def adapted_modules(model: nnx.Module) -> dict[str, AdaptedLinear]:
    """Module path → adapted layer, in a stable order."""
    found = {_dotted(path): node for path, node in nnx.iter_graph(model) if isinstance(node, AdaptedLinear)}
    return dict(sorted(found.items()))


def adapter_config(model: nnx.Module) -> AdapterConfig:
    """The config of the model's adapters.

    Raises:
        AdapterError: the model has no adapters.
    """
    modules = adapted_modules(model)
    if not modules:
        raise AdapterError("the model has no adapters; inject_adapters or load_adapter first")
    return next(iter(modules.values())).config


def count_adapter_params(model: nnx.Module) -> ParamCounts:
    """Trainable parameters of the adapters in ``model``, per module and in total (measured)."""
    return ParamCounts.of({
        path: sum(v.size for v in jax.tree.leaves(nnx.state(module.delta, AdapterParam)))
        for path, module in adapted_modules(model).items()
    })


def adapter_param_counts(config: AdapterConfig, shapes: Mapping[str, tuple[int, int]]) -> ParamCounts:
    """Trainable parameters an adapter would have on layers of these shapes (predicted, nothing is built).

    Args:
        config: the adapter config (QTHA: a None bond dimension is resolved as ``inject_adapters`` would).
        shapes: module path → (d_in, d_out), e.g. from ``target_shapes``.
    """
    if isinstance(config, LoraConfig):
        return ParamCounts.of({p: lora_param_count(i, o, config.rank) for p, (i, o) in shapes.items()})
    bond = resolve_bond_dim(config, shapes)
    return ParamCounts.of({p: qtha_param_count(config, i, o, bond_dim=bond) for p, (i, o) in shapes.items()})
