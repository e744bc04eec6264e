"""A finished cycle's card as a file: ``<state_dir>/cycles/<n>/report.html``, self-contained (inline CSS and SVG).

Written once when the cycle finishes (:func:`write_cycle_report`, called by the daemon's driver) and on demand by
``qtha report`` for a cycle that has none; atomically (a reader never sees half a file). Housekeeping keeps the
file when it clears the cycle's work files (:data:`agent.cycle.machine.REPORT_FILE`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from agent.console.pages import render_cycle
from agent.console.signals import SignalSource
from agent.console.view import load_cycle
from agent.cycle.machine import REPORT_FILE
from agent.store import Store

__all__ = ["report_path", "write_cycle_report", "write_report_quietly"]

log = logging.getLogger("qtha.console")


def report_path(state_dir: Path, cycle_id: int) -> Path:
    """Where cycle ``cycle_id``'s report lives (whether or not it was written)."""
    return state_dir / "cycles" / str(cycle_id) / REPORT_FILE


def write_cycle_report(
    store: Store, state_dir: Path, cycle_id: int, *, sources: Sequence[SignalSource] | None = None
) -> Path:
    """Renders cycle ``cycle_id``'s card from the store and writes it; returns the path.

    Raises:
        NotFoundError: there is no such cycle.
        OSError: the file cannot be written.
    """
    html = render_cycle(load_cycle(store, cycle_id, sources=sources), standalone=True)
    path = report_path(state_dir, cycle_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_report_quietly(store: Store, state_dir: Path, cycle_id: int) -> Path | None:
    """:func:`write_cycle_report` for the daemon: a report that cannot be written is logged, never raised (the
    cycle's outcome is already committed; a missing report must not fail the daemon)."""
    try:
        path = write_cycle_report(store, state_dir, cycle_id)
    except Exception:
        log.exception("could not write the report of cycle %s", cycle_id)
        return None
    log.info("cycle %s report: %s", cycle_id, path)
    return path
