"""``qtha export``: a version written as a standalone model (its adapter folded into the base weights).

Uses the same loading path as the server (verified artifact, the base checkpoint, the adapter), then the model's
own export: an HF directory or one GGUF file that other tools load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from agent.artifacts import Layout
from agent.config import QthaConfig
from agent.serve.loader import EngineLimits, ModelLoader
from agent.store import Store

__all__ = ["ExportRefusedError", "export_version"]


class ExportRefusedError(ValueError):
    """The version cannot be written as plain weights: activation-mode QTHA has no weight delta to fold."""


def export_version(
    config: QthaConfig,
    store: Store,
    version: str,
    out: Path,
    *,
    format: Literal["safetensors", "gguf"] = "safetensors",
) -> Path:
    """Writes ``version`` (an id, ``"champion"`` or ``"base"``) to ``out``; returns the path written.

    Raises:
        agent.store.NotFoundError: no such version.
        agent.artifacts.ArtifactCorruptError, ArtifactMissingError: its artifact fails verification.
        ExportRefusedError: activation-mode QTHA (no weight delta to fold).
        ValueError: ``out`` exists, an unknown format, or a tokenizer GGUF cannot describe (``model.ExportError``).
    """
    version_id: str | None = version
    if version == "champion":
        version_id = store.champion.get().version_id
    elif version == "base":
        version_id = None
    loader = ModelLoader(
        model_source=config.model.source,
        layout=Layout(config.state_dir),
        version_row=store.versions.get,
        limits=EngineLimits(max_batch=1, max_queue=1, max_prompt_tokens=1, max_tokens=1),  # no engine is built
        simulator=config.quantum.backend,
    )
    adapted, tokenizer = loader.adapted(version_id)  # checks the version before anything heavy is imported
    from model import UnmergeableAdapterError, export_checkpoint

    try:
        return Path(export_checkpoint(adapted, tokenizer, out, format=format))
    except UnmergeableAdapterError as exc:
        raise ExportRefusedError(str(exc)) from None
