"""Prompts real traffic sent, for self-improvement: the serving usage log, with feedback's correct answers,
exported into a self-improvement cycle's work directory before it trains.

The training child does not read the database (it may run on another node of the cluster; only the cycle's work
directory is shared), so the daemon writes the prompts there as :data:`USAGE_POOL`, one JSON object a line::

    {"prompt_id": "usage/<request id>", "prompt": "…", "correct_answer": "19"}   # correct_answer may be null

Taken: requests answered successfully (status 200) whose conversation is a single user message (what a pool
prompt is; a multi-turn conversation or a system prompt would change the task), newest first, each distinct
prompt once (a copy with a correct answer wins), at most ``limit``. ``correct_answer`` is the newest feedback's
``correct_answer`` on any request with that prompt; the child turns it into a known answer when it is an integer
(bare or marked) and otherwise lets the majority vote decide. A server run with ``serve.usage_content = false``
logs no text, so nothing is exported. The file is written once per cycle: a resumed cycle samples the same pool.
Held-out prompts are removed by the child, like those of every other source (``model.disjoint_pool``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import policies
from agent.cycle.trainer import EvalOutcome, Progress, Trainer, TrainOutcome
from agent.files import fsync_path

if TYPE_CHECKING:
    from agent.store import Store, UsageRecord

__all__ = ["MAX_USAGE_PROMPTS", "USAGE_POOL", "UsagePoolTrainer", "export_usage_pool", "usage_prompts"]

USAGE_POOL = "usage-prompts.jsonl"
MAX_USAGE_PROMPTS = 5000


def _single_prompt(messages: tuple[Mapping[str, Any], ...]) -> str | None:
    if len(messages) != 1 or messages[0].get("role") != "user":
        return None
    content = messages[0].get("content")
    return content if isinstance(content, str) and content.strip() else None


def usage_prompts(store: Store, *, limit: int = MAX_USAGE_PROMPTS) -> list[dict[str, Any]]:
    """The usage log's prompts as pool rows (see the module docstring), newest first."""
    records: list[UsageRecord] = store.usage.list(limit=4 * limit)
    if not records:
        return []
    answers: dict[str, str] = {}  # request id -> the newest correct answer given for it
    for given in store.usage.feedback(since=records[0].at):
        if given.correct_answer is not None and given.correct_answer.strip():
            answers[given.request_id] = given.correct_answer.strip()
    rows: dict[str, dict[str, Any]] = {}
    for record in reversed(records):
        prompt = _single_prompt(record.messages) if record.status == 200 and record.error is None else None
        if prompt is None:
            continue
        key = " ".join(prompt.split())
        found = rows.get(key)
        if found is None:
            if len(rows) < limit:
                rows[key] = {"prompt_id": f"usage/{record.request_id}", "prompt": prompt,
                             "correct_answer": answers.get(record.request_id)}
        elif found["correct_answer"] is None and record.request_id in answers:
            found["correct_answer"] = answers[record.request_id]
    return list(rows.values())


def export_usage_pool(store: Store, path: Path, *, limit: int = MAX_USAGE_PROMPTS) -> int:
    """Writes :func:`usage_prompts` to ``path`` (mode 0600, atomically) unless it is there already; returns the
    number of prompts in the file."""
    if path.exists():
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    rows = usage_prompts(store, limit=limit)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return len(rows)


class UsagePoolTrainer:
    """A :class:`~agent.cycle.trainer.Trainer` that exports the usage log's prompts into the work directory of a
    self-improvement cycle before ``inner`` trains it; everything else is ``inner``'s."""

    def __init__(self, inner: Trainer, store: Store, *, limit: int = MAX_USAGE_PROMPTS) -> None:
        self.inner, self.store, self.limit = inner, store, limit

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        if recipe.method == "self-improve":
            workdir.mkdir(parents=True, exist_ok=True)
            export_usage_pool(self.store, workdir / USAGE_POOL, limit=self.limit)
        return self.inner.train(recipe, workdir, resume_from=resume_from, parent_dir=parent_dir, progress=progress)

    def evaluate(self, artifact_dir: Path, *, version_id: str, window: int | None = None) -> EvalOutcome:
        if window is None:  # not every trainer takes a window (the Ray trainer does not)
            return self.inner.evaluate(artifact_dir, version_id=version_id)
        return self.inner.evaluate(artifact_dir, version_id=version_id, window=window)

    def __getattr__(self, name: str) -> Any:  # what else callers read of a trainer (its runner, config, nodes)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
