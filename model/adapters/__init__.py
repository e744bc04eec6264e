"""LoRA and QTHA adapters for the frozen linear layers of a model (re-exported by ``model``)."""

from .base import AdaptedLinear, AdapterError, AdapterParam
from .inject import (
    AdapterConfig,
    ParamCounts,
    adapted_modules,
    adapter_config,
    adapter_param_counts,
    count_adapter_params,
    inject_adapters,
    target_shapes,
)
from .lora import LoraAdapter, LoraConfig, lora_param_count
from .mpo import MPO, balanced_factors, mpo_bond_dims, mpo_param_count, mpo_to_dense
from .qtha import (
    QnnProbs,
    QthaAdapter,
    QthaAdapterConfig,
    has_token_circuits,
    qtha_circuit_spec,
    qtha_param_count,
    qtha_rank,
    refresh_qnn_cores,
    resolve_bond_dim,
)
from .standins import TokenMlpLayout, token_mlp_layout, token_mlp_qnn, weight_softmax_factory

__all__ = [
    "MPO",
    "AdaptedLinear",
    "AdapterConfig",
    "AdapterError",
    "AdapterParam",
    "LoraAdapter",
    "LoraConfig",
    "ParamCounts",
    "QnnProbs",
    "QthaAdapter",
    "QthaAdapterConfig",
    "TokenMlpLayout",
    "adapted_modules",
    "adapter_config",
    "adapter_param_counts",
    "balanced_factors",
    "count_adapter_params",
    "inject_adapters",
    "lora_param_count",
    "mpo_bond_dims",
    "mpo_param_count",
    "mpo_to_dense",
    "qtha_circuit_spec",
    "qtha_param_count",
    "qtha_rank",
    "has_token_circuits",
    "refresh_qnn_cores",
    "resolve_bond_dim",
    "target_shapes",
    "token_mlp_layout",
    "token_mlp_qnn",
    "weight_softmax_factory",
]
