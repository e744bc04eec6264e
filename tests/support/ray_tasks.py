"""Child tasks for the Ray cluster tests: the stand-in trainer (:mod:`tests.support.standin_trainer`) behind the
child protocol of :mod:`agent.child.entry`, so :class:`agent.child.remote.RayTrainer` runs it on a node exactly as
it runs ``agent.child.tasks:train`` there.

The harness steers them through a JSON file named by ``$TEST_RAY_KNOBS`` (the nodes inherit the harness's
environment; the file is on the storage every node sees, and is re-read by every task):

    task_seed   the stand-in's data seed (1)
    delay_s     sleep before training, checking the stop flag (0)
    step_s      sleep after every step (0)
    finish_s    sleep after the last step before returning the result (0)
    hold_s      train for at least this long, in all (0)
    trainings   a file to append ``{"workdir", "node", "start", "end"}`` to when a training ends
    stubborn    ignore stop requests, as a hung child would (false)
    marker      a file to append the node id to, once per attempt
    pids        a file to append ``{"pid", "worker_pid", "node", "cycle", "gpus"}`` to, once per attempt (``gpus``:
                the ``CUDA_VISIBLE_DEVICES`` Ray gave the task)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import policies
from agent.child.entry import Interrupted, TaskContext
from tests.support.standin_trainer import StandinTrainer

KNOBS_ENV = "TEST_RAY_KNOBS"


def knobs() -> dict[str, Any]:
    path = os.environ.get(KNOBS_ENV)
    if not path or not Path(path).exists():
        return {}
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))


def write_knobs(path: Path, **values: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values), encoding="utf-8")
    os.replace(tmp, path)


class _Events:
    """The stand-in's observer: each step's loss as the model task's ``progress`` event."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx

    def training_step(self, cycle: str, *, step: int, total: int, loss: float, new_steps: int,
                      new_nonfinite: int) -> None:
        self._ctx.emit({"event": "progress", "step": step, "of": total, "loss": loss, "nonfinite": 0})

    def circuits_run(self, backend: str, *, circuits: int, shots: int, errors: Mapping[str, int]) -> None:
        pass

    def status(self, text: str) -> None:
        pass


def _append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def train(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    k = knobs()
    start = time.time()
    workdir = Path(payload["workdir"])
    node = str(payload.get("remote", {}).get("node", ""))
    _append(k.get("marker"), node)
    _append(k.get("pids"), json.dumps({"pid": os.getpid(), "worker_pid": os.getppid(), "node": node,
                                       "cycle": workdir.name, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}))
    stubborn = bool(k.get("stubborn"))
    deadline = time.monotonic() + float(k.get("delay_s", 0))
    while time.monotonic() < deadline:
        if ctx.stop_requested and not stubborn:
            raise Interrupted("stopped before the first step")
        time.sleep(0.05)
    step_s = float(k.get("step_s", 0))

    def progress(step: int, checkpoint: Path | None) -> None:
        if checkpoint is not None:
            ctx.emit({"event": "checkpoint", "step": step, "path": str(checkpoint)})
        time.sleep(step_s)
        if ctx.stop_requested and not stubborn:
            raise Interrupted(f"stopped after step {step}; checkpoint at that step")

    resume_from, parent_dir = payload.get("resume_from"), payload.get("parent_dir")
    outcome = StandinTrainer(task_seed=int(k.get("task_seed", 1)), observer=_Events(ctx)).train(
        policies.Recipe.from_dict(payload["recipe"]),
        workdir,
        resume_from=Path(resume_from) if resume_from else None,
        parent_dir=Path(parent_dir) if parent_dir else None,
        progress=progress,
    )
    time.sleep(float(k.get("finish_s", 0)))
    time.sleep(max(0.0, float(k.get("hold_s", 0)) - (time.time() - start)))
    _append(k.get("trainings"), json.dumps({"workdir": str(workdir), "node": node, "start": start,
                                            "end": time.time()}))
    return {
        "artifact_dir": str(outcome.artifact_dir),
        "steps": outcome.steps,
        "metrics": dict(outcome.metrics) | {"first_step": float(_first_step(resume_from))},
        "base_fingerprint": outcome.base_fingerprint,
        "adapter_kind": outcome.adapter_kind,
        "adapter_config": dict(outcome.adapter_config),
    }


def _first_step(resume_from: str | None) -> int:
    return 1 if not resume_from else int(Path(resume_from).name.removeprefix("step-")) + 1


def evaluate(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    k = knobs()
    outcome = StandinTrainer(task_seed=int(k.get("task_seed", 1))).evaluate(
        Path(payload["artifact_dir"]), version_id=str(payload["version_id"]), window=payload.get("eval_window")
    )
    return {"scores": dict(outcome.scores), "metrics": dict(outcome.metrics), "probes": []}
