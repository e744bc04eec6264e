"""The names the quality study needs from ``model``: its public API where it already re-exports them.

The adapter and training names are being added to ``model/__init__`` while this study is written; until they are,
they come from the subpackages that ``model`` will re-export (``model.adapters`` declares ``__all__``).
"""

from __future__ import annotations

try:
    from model import (
        AdapterParam,
        LoraConfig,
        QthaAdapterConfig,
        TrainConfig,
        adapter_param_counts,
        batch_schedule,
        count_adapter_params,
        inject_adapters,
        target_shapes,
        train,
    )
except ImportError:  # pragma: no cover - depends on how far model/ has landed
    from model.adapters import (
        AdapterParam,
        LoraConfig,
        QthaAdapterConfig,
        adapter_param_counts,
        count_adapter_params,
        inject_adapters,
        target_shapes,
    )
    from model.train import TrainConfig, batch_schedule, train

__all__ = [
    "AdapterParam",
    "LoraConfig",
    "QthaAdapterConfig",
    "TrainConfig",
    "adapter_param_counts",
    "batch_schedule",
    "count_adapter_params",
    "inject_adapters",
    "target_shapes",
    "train",
]
