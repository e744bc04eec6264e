"""The child-process protocol with real child processes: events, results, stop, crash, OOM-like kill, timeout.

The task functions below run in the child (``tests.agent.test_child_runner:<name>``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.child.entry import Interrupted, TaskContext
from agent.child.runner import ChildRunner

ROOT = Path(__file__).resolve().parents[2]
ME = "tests.agent.test_child_runner"


def count_task(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    print("noise on stdout must not corrupt the event stream")
    for step in range(1, payload["steps"] + 1):
        ctx.emit({"event": "progress", "step": step, "loss": 1.0 / step})
    return {"steps": payload["steps"], "pid": os.getpid()}


def stoppable_task(payload: dict[str, Any], ctx: TaskContext) -> None:
    step = 0
    while not ctx.stop_requested:
        step += 1
        ctx.emit({"event": "progress", "step": step})
        time.sleep(0.02)  # one "training step"
    Path(payload["checkpoint"]).write_text(str(step))
    raise Interrupted(f"checkpoint at step {step}")


def crash_task(payload: dict[str, Any], ctx: TaskContext) -> None:
    raise ValueError("recipe rank=-1 is invalid")


def oom_task(payload: dict[str, Any], ctx: TaskContext) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does


def stubborn_task(payload: dict[str, Any], ctx: TaskContext) -> None:
    while True:  # ignores the stop flag: only a kill ends it
        time.sleep(0.02)


def test_events_and_result(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    outcome = ChildRunner(cwd=ROOT).run(f"{ME}:count_task", {"steps": 3}, tmp_path, on_event=events.append)
    assert outcome.status == "done" and outcome.result["steps"] == 3
    assert outcome.result["pid"] != os.getpid()  # it really ran in a child
    assert [e["step"] for e in events] == [1, 2, 3] and events[-1]["loss"] == 1 / 3
    assert "noise on stdout" in (tmp_path / "child.stderr").read_text()


def test_stop_request_checkpoints_and_reports_interrupted(tmp_path: Path) -> None:
    runner = ChildRunner(cwd=ROOT)
    progressed = threading.Event()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run(
        f"{ME}:stoppable_task", {"checkpoint": str(tmp_path / "ckpt")}, tmp_path,
        on_event=lambda e: progressed.set() if e.get("step", 0) >= 2 else None)))
    thread.start()
    assert progressed.wait(timeout=60), "worker never reported progress"
    assert runner.running and runner.request_stop()
    thread.join(timeout=60)
    [result] = outcome
    assert result.status == "interrupted" and result.returncode == 75
    assert int((tmp_path / "ckpt").read_text()) >= 2


def test_crash_is_reported_not_raised(tmp_path: Path) -> None:
    outcome = ChildRunner(cwd=ROOT).run(f"{ME}:crash_task", {}, tmp_path)
    assert outcome.status == "failed" and outcome.returncode == 1
    assert "ValueError: recipe rank=-1 is invalid" in (outcome.error or "")
    assert "Traceback" in (outcome.error or "")  # stderr tail for the operator


def test_killed_child_is_reported(tmp_path: Path) -> None:
    outcome = ChildRunner(cwd=ROOT).run(f"{ME}:oom_task", {}, tmp_path)
    assert outcome.status == "killed" and outcome.returncode == -signal.SIGKILL
    assert "out-of-memory" in (outcome.error or "")


def test_timeout_kills(tmp_path: Path) -> None:
    outcome = ChildRunner(cwd=ROOT, kill_grace_s=0.5).run(f"{ME}:stubborn_task", {}, tmp_path, timeout_s=1.0)
    assert outcome.status == "timeout" and outcome.returncode is not None


def test_bad_entry_fails_cleanly(tmp_path: Path) -> None:
    outcome = ChildRunner(cwd=ROOT).run(f"{ME}:no_such_task", {}, tmp_path)
    assert outcome.status == "failed" and "has no callable 'no_such_task'" in (outcome.error or "")


def test_event_handler_error_stops_the_child_and_propagates(tmp_path: Path) -> None:
    class Fenced(Exception):
        pass

    def handler(event: dict[str, Any]) -> None:
        if event.get("step", 0) >= 3:
            raise Fenced("cycle adopted by another owner")

    runner = ChildRunner(cwd=ROOT)
    with pytest.raises(Fenced):
        runner.run(f"{ME}:stoppable_task", {"checkpoint": str(tmp_path / "ckpt")}, tmp_path, on_event=handler)
    assert int((tmp_path / "ckpt").read_text()) >= 3  # the child checkpointed on the way out
    assert not runner.running


def test_children_of_several_threads_are_all_stopped_by_one_request(tmp_path: Path) -> None:
    """Parallel candidates on a cluster run one bridge child each through the daemon's one runner."""
    runner = ChildRunner(cwd=ROOT)
    progressed = [threading.Event(), threading.Event()]
    outcomes: list[Any] = []

    def run(i: int) -> None:
        outcomes.append(runner.run(
            f"{ME}:stoppable_task", {"checkpoint": str(tmp_path / f"ckpt{i}")}, tmp_path / str(i),
            on_event=lambda e: progressed[i].set() if e.get("step", 0) >= 2 else None))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    assert all(p.wait(timeout=60) for p in progressed), "a child never reported progress"
    assert runner.running and runner.request_stop()
    for thread in threads:
        thread.join(timeout=60)
    assert [o.status for o in outcomes] == ["interrupted", "interrupted"] and not runner.running
