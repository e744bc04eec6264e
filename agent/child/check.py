"""The model and quantum-backend check, run in a child process like every task that imports ``model``.

``qtha doctor`` runs it on demand and the daemon before it reports ready (``daemon.check_model``), so a
``model.source`` that does not load fails the start with one line instead of failing the first cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.child.runner import ChildRunner
from agent.child.trainer import task_config
from agent.config import QthaConfig

__all__ = ["CHECK_ENTRY", "ModelCheckError", "ModelReport", "check_model"]

CHECK_ENTRY = "agent.child.tasks:check"


class ModelCheckError(RuntimeError):
    """The base model or the quantum backend cannot be loaded; one line with the cause and the fix."""


@dataclass(frozen=True)
class ModelReport:
    source: str
    layers: int
    vocab: int
    backend: str


def check_model(config: QthaConfig, runner: ChildRunner, *, timeout_s: float = 600.0) -> ModelReport:
    """Loads ``model.source`` and builds ``quantum.backend`` in a child.

    Raises:
        ModelCheckError: the child reported an error, died or ran past ``timeout_s`` (the message names
            ``model.source`` and the child's own one-line error; its stderr stays in ``work/check/child.stderr``).
    """
    source = config.model.source
    if not source.startswith("bundled:") and not Path(source).exists():  # no need to start a child to see that
        raise ModelCheckError(
            f"model.source {source!r} does not load (no such file or directory); fix model.source (a GGUF file, "
            "an HF directory or bundled:smollm2)"
        )
    work: Path = config.state_dir / "work" / "check"
    outcome = runner.run(CHECK_ENTRY, task_config(config), work, timeout_s=timeout_s)
    if outcome.status == "done" and outcome.result:
        r = outcome.result
        return ModelReport(str(r["model"]), int(r["layers"]), int(r["vocab"]), str(r["backend"]))
    first = (outcome.error or outcome.status).split("; stderr tail:", 1)[0].splitlines()[0][:300]
    raise ModelCheckError(
        f"model.source {config.model.source!r} with quantum.backend {config.quantum.backend!r} does not load "
        f"({first}); fix model.source (a GGUF file, an HF directory or bundled:smollm2) or the backend"
    )
