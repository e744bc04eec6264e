"""``qtha replay FILE [--json]``: print the decisions a recorded history produces, and why.

The file I/O lives here; the replay itself is the pure :func:`policies.replay_history`. The ``--json`` output is
exactly the golden format of ``tests/policies/data/history.golden.json``; regenerate it after an intended policy
change with ``qtha replay tests/policies/data/history.json --json > tests/policies/data/history.golden.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from policies import PolicyInputError, ReplayStep, replay_history

__all__ = ["format_steps", "replay_command", "steps_json"]

EXIT_USAGE = 2  # as agent.cli.app: usage or bad input


def steps_json(steps: tuple[ReplayStep, ...]) -> str:
    """The steps as stable JSON text (sorted keys, two-space indent, trailing newline)."""
    return json.dumps([s.to_dict() for s in steps], indent=2, sort_keys=True) + "\n"


def format_steps(steps: tuple[ReplayStep, ...]) -> str:
    """The steps for a human: one header line per decision, one indented line per reason."""
    lines = []
    for step in steps:
        d = step.decision
        lines.append(f"[{step.index}] {d.at.isoformat()} {d.policy}: {d.action}")
        lines += [f"    {str(r.kind):<10} {r.code}: {r.message}" for r in d.reasons]
    return "\n".join(lines) + ("\n" if lines else "")


def replay_command(
    file: Annotated[Path, typer.Argument(help="A recorded history (JSON, format qtha-history/1).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")] = False,
) -> None:
    """Replay a recorded history and print the sequence of decisions with their reasons."""
    try:
        history = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        typer.echo(f"qtha: cannot read history {file}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except json.JSONDecodeError as exc:
        typer.echo(f"qtha: history {file} is not valid JSON: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        steps = replay_history(history)
    except PolicyInputError as exc:
        typer.echo(f"qtha: history {file}: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(steps_json(steps) if as_json else format_steps(steps), nl=False)
