"""``qtha serve`` (the champion behind an OpenAI-compatible API) and ``qtha export`` (a version as a merged model).

Exit codes: 0 ok · 1 failure · 2 usage or bad configuration · 3 refused (an activation-mode version cannot be
exported as plain weights).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.common import EXIT_REFUSED, EXIT_USAGE, ConfigOption, fail, read_config

__all__ = ["export_command", "serve_command"]


class ExportFormat(StrEnum):
    safetensors = "safetensors"
    gguf = "gguf"


def serve_command(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default: serve.host, loopback).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Listen port (default: serve.port).")] = None,
) -> None:
    """Serve the champion over an OpenAI-compatible HTTP API; a promotion or rollback swaps it in without
    downtime. SIGTERM stops it after running requests finish."""
    from agent.config import ConfigError, load_config
    from agent.serve import ServeSetupError, run_serve

    cfg = read_config(config)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        try:
            cfg = load_config(config, serve={**cfg.serve.model_dump(), **overrides})
        except ConfigError as exc:
            fail(str(exc), EXIT_USAGE)
    try:
        code = run_serve(cfg)
    except ServeSetupError as exc:
        fail(str(exc), EXIT_USAGE)
    raise typer.Exit(code)


def export_command(
    version: Annotated[str, typer.Argument(help="A version id, 'champion' (the serving one) or 'base'.")],
    out: Annotated[Path, typer.Option("--out", help="Directory (safetensors) or file (gguf) to write; must not exist.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="HF directory or one GGUF file.")] = (
        ExportFormat.safetensors
    ),
    config: ConfigOption = None,
) -> None:
    """Write a version as a standalone model: LoRA or weight-mode QTHA folded into the base weights, as an HF
    directory (config.json, model.safetensors, tokenizer.json) or a GGUF file that other tools load."""
    from agent.artifacts import ArtifactCorruptError, ArtifactMissingError
    from agent.serve.export import ExportRefusedError, export_version
    from agent.store import NotFoundError, open_store

    cfg = read_config(config)
    store = open_store(cfg.database_url)
    try:
        written = export_version(cfg, store, version, out, format=format.value)
    except NotFoundError as exc:
        fail(str(exc), EXIT_USAGE)
    except (ArtifactCorruptError, ArtifactMissingError) as exc:
        fail(f"cannot export {version}: {exc}")
    except ExportRefusedError as exc:
        fail(f"cannot export {version}: {exc}", EXIT_REFUSED)
    except ValueError as exc:  # the output exists, or the format cannot describe this model
        fail(f"cannot export {version}: {exc}", EXIT_USAGE)
    finally:
        store.close()
    typer.echo(f"exported {version} to {written}")
