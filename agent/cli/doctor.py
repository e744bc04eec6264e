"""``qtha doctor``: the daemon's start-up checks on demand, each reported on one line.

The same functions the daemon calls before it reports ready (``agent.daemon.preflight``, ``open_store``,
``agent.child.check``), so "doctor passes" means "the daemon will start".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from agent.child.check import check_model
from agent.child.runner import ChildRunner
from agent.cli.common import EXIT_OK, STARTUP_ERRORS, exit_code_of
from agent.config import ConfigError, QthaConfig, load_config
from agent.daemon.preflight import PreflightError, check_port, prepare_state_dir, restrict_umask
from agent.store import LATEST_VERSION, StoreError, open_store, safe_url

__all__ = ["CheckResult", "run_checks"]


class CheckResult(NamedTuple):
    name: str
    ok: bool
    detail: str
    exit_code: int


def _run(name: str, check: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, check(), EXIT_OK)
    except STARTUP_ERRORS as exc:
        return CheckResult(name, False, str(exc), exit_code_of(exc))


def run_checks(config_path: Path | None, *, check_model: bool = True) -> list[CheckResult]:
    """Configuration, state directory, database (reachable, migrated), metrics port, model and backend."""
    restrict_umask()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [CheckResult("configuration", False, str(exc), exit_code_of(exc))]
    results = [CheckResult("configuration", True, f"valid (state_dir {config.state_dir})", EXIT_OK)]
    results.append(_run("state directory", lambda: _state_dir(config)))
    if results[-1].ok:
        results.append(_run("database", lambda: _database(config)))
    if config.metrics.enabled:
        results.append(_run("metrics port", lambda: _port(config)))
    if check_model:
        results.append(_run("model and backend", lambda: _model(config)))
    return results


def _state_dir(config: QthaConfig) -> str:
    found = prepare_state_dir(config.state_dir)
    note = "" if found.mode & 0o077 == 0 else f"; others can read it (mode {found.mode:o}): chmod 700 it"
    return f"{found.path} is a writable directory{' (created)' if found.created else ''}{note}"


def _database(config: QthaConfig) -> str:
    store = open_store(config.database_url)
    try:
        version = store.schema_version()
    finally:
        store.close()
    if version != LATEST_VERSION:  # open_store migrates, so this is a store bug rather than an operator's
        raise StoreError(f"schema version {version}, expected {LATEST_VERSION}")
    return f"{safe_url(config.database_url)} reachable, schema version {version} (latest)"


def _port(config: QthaConfig) -> str:
    host, port = config.metrics.host, config.metrics.port
    try:
        check_port(host, port)
    except PreflightError as exc:
        if exc.kind == "environment":
            raise PreflightError(f"{exc} (a running daemon holds its own port: then this is expected)") from None
        raise
    return f"{host}:{port} is free"


def _model(config: QthaConfig) -> str:
    report = check_model(config, ChildRunner(), timeout_s=config.daemon.train_timeout_s)
    return f"{report.source} loads ({report.layers} layers, vocabulary {report.vocab}); backend {report.backend} builds"
