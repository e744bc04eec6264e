"""The ``qtha`` command line.

Exit codes: 0 ok, 1 failure, 2 usage or bad configuration, 3 refused by policy, 4 lock held.
"""

from __future__ import annotations

import json
import sys

import typer

from agent.cli.admin import admin_app
from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    read_config,
)
from agent.cli.replay import replay_command
from agent.cli.serve import export_command, serve_command
from agent.daemon.preflight import restrict_umask

__all__ = ["EXIT_FAILURE", "EXIT_LOCKED", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "app", "main"]

app = typer.Typer(help="qtha: autonomous QTHA fine-tuning daemon and its admin CLI.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.command("replay")(replay_command)
app.command("serve")(serve_command)
app.command("export")(export_command)
app.add_typer(admin_app)  # daemon, status, versions, history, decisions, overrides, ingest, observe


@app.callback()
def _private_files() -> None:
    """Every command may create the state directory, the database or inbox files: 0700/0600 (umask 077) outside
    systemd as inside, so model versions and operator data are never world-readable."""
    restrict_umask()


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


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code instead of raising SystemExit when embedded."""
    try:
        app(args=argv, prog_name="qtha", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
