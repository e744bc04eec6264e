"""The ``qtha`` command line.

Exit codes: 0 ok, 1 failure, 2 usage or bad configuration, 3 refused by policy, 4 lock held.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from agent.config import ConfigError, QthaConfig, load_config
from agent.replay import replay_command

__all__ = ["EXIT_FAILURE", "EXIT_LOCKED", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "app", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED, EXIT_LOCKED = 0, 1, 2, 3, 4

app = typer.Typer(help="qtha: autonomous QTHA fine-tuning daemon and its admin CLI.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.command("replay")(replay_command)

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


@config_app.command("show")
def config_show(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Print the effective configuration (defaults < file < QTHA_* environment)."""
    cfg = read_config(config)
    if as_json:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True))
        return
    for section, values in cfg.model_dump(mode="json").items():
        if isinstance(values, dict):
            for key, value in values.items():
                typer.echo(f"{section}.{key} = {json.dumps(value)}")
        else:
            typer.echo(f"{section} = {json.dumps(values)}")
    typer.echo(f"# database_url = {cfg.database_url}")


def _register_admin_commands() -> None:
    # Imported here, after the helpers above exist: agent.cli_admin builds on them (fail, read_config, options).
    from agent.cli_admin import admin_app

    app.add_typer(admin_app)


_register_admin_commands()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code instead of raising SystemExit when embedded."""
    try:
        app(args=argv, prog_name="qtha", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
