"""What every ``qtha`` command shares: exit codes, the --config / --json options, failing with a message.

Exit codes: 0 ok, 1 failure, 2 usage or bad configuration, 3 refused by policy, 4 lock held, 5 environment not
ready (the database cannot be reached, the state directory is not a writable directory, the port is taken): fix
the machine, not the configuration, then retry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from agent.child.check import ModelCheckError
from agent.config import ConfigError, QthaConfig, load_config
from agent.daemon.preflight import PreflightError
from agent.store import DatabaseUnavailableError, DatabaseUrlError, SchemaTooNewError, StoreError

__all__ = [
    "EXIT_ENVIRONMENT",
    "EXIT_FAILURE",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "STARTUP_ERRORS",
    "ConfigOption",
    "JsonOption",
    "exit_code_of",
    "fail",
    "read_config",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED, EXIT_LOCKED, EXIT_ENVIRONMENT = 0, 1, 2, 3, 4, 5

# What start-up can fail with, each one line naming the cause and the fix (see exit_code_of).
STARTUP_ERRORS = (ConfigError, PreflightError, StoreError, ModelCheckError)


def exit_code_of(exc: BaseException) -> int:
    """The exit status of a start-up error: 2 when the configuration must change, 5 when the machine must, 4 for
    a locked SQLite file, 1 otherwise."""
    if isinstance(exc, ConfigError | DatabaseUrlError | ModelCheckError | SchemaTooNewError):
        return EXIT_USAGE
    if isinstance(exc, PreflightError):
        return EXIT_USAGE if exc.kind == "config" else EXIT_ENVIRONMENT
    if isinstance(exc, DatabaseUnavailableError):
        return EXIT_ENVIRONMENT
    if "locked" in str(exc).lower():
        return EXIT_LOCKED
    return EXIT_FAILURE

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
