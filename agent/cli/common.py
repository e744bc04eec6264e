"""What every ``qtha`` command shares: exit codes, the --config / --json options, failing with a message.

Exit codes: 0 ok, 1 failure, 2 usage or bad configuration, 3 refused by policy, 4 lock held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from agent.config import ConfigError, QthaConfig, load_config

__all__ = [
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "ConfigOption",
    "JsonOption",
    "fail",
    "read_config",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED, EXIT_LOCKED = 0, 1, 2, 3, 4

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: $QTHA_CONFIG or built-ins).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"qtha: {message}", err=True)
    raise typer.Exit(code)


def read_config(path: Path | None) -> QthaConfig:
    """Loads the configuration or exits 2 with the message naming the bad key."""
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
