"""Remote children without a cluster: the shared-directory channel, the bridge's follow loop against a stand-in
for Ray (stop → stop file → force cancel, a lost head, lost workers, failures), the node side with real child
processes, and the daemon side's epoch keying and refusals. The same code on a real multi-node cluster:
tests/agent/test_cluster.py."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.child.bridge import (
    HeadLost,
    RemoteChildError,
    RemoteSpec,
    TaskKey,
    connect,
    follow,
    gpus_to_request,
    head_endpoint,
    run_on_node,
)
from agent.child.channel import Channel
from agent.child.entry import Interrupted
from agent.child.remote import RayRunner, RayTrainer, task_subject
from agent.child.runner import ChildOutcome
from agent.config import QthaConfig
from agent.cycle.trainer import save_checkpoint
from agent.store import StaleEpochError
from tests.support.standin_trainer import standin_recipe

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests.support.ray_tasks"


# -- the channel -----------------------------------------------------------------------------------------------------


def test_the_channel_delivers_whole_lines_once_and_skips_torn_ones(tmp_path: Path) -> None:
    channel = Channel(tmp_path / "c").open()
    reader = channel.reader()
    assert reader.read() == []
    channel.append({"event": "progress", "step": 1})
    with open(channel.path / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"torn": \n{"event": "progress", "st')  # a killed writer's torn line, then one being written
    assert reader.read() == [{"event": "progress", "step": 1}]
    with open(channel.path / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('ep": 2}\n')
    assert reader.read() == [{"event": "progress", "step": 2}]
    assert reader.read() == []
    assert not channel.stop_requested()
    channel.request_stop()
    assert Channel(tmp_path / "c").stop_requested()


def test_resource_requests_and_head_addresses() -> None:
    assert gpus_to_request(None, {"CPU": 4.0}) == 0.0
    assert gpus_to_request(None, {"CPU": 4.0, "GPU": 2.0}) == 1.0  # "GPU when present"
    assert gpus_to_request(0.0, {"GPU": 2.0}) == 0.0 and gpus_to_request(0.5, {}) == 0.5
    assert head_endpoint("ray://head:10001") == ("head", 10001)
    assert head_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert head_endpoint("[::1]:6379") == ("::1", 6379)
    assert head_endpoint("auto") is None


# -- the bridge's follow loop against a stand-in for Ray -----------------------------------------------------------


class _Exceptions:
    class RayError(Exception):
        pass

    class RayTaskError(RayError):
        pass

    class TaskCancelledError(RayError):
        pass

    class WorkerCrashedError(RayError):
        pass


class FakeRay:
    """``wait``/``get``/``cancel`` of one task whose ending the test decides (``finish``)."""

    exceptions = _Exceptions

    def __init__(self) -> None:
        self.cancelled: list[bool] = []
        self._reply: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

    def finish(self, reply: Any = None, error: BaseException | None = None) -> None:
        self._reply, self._error = reply, error
        self._done.set()

    def wait(self, refs: list[Any], timeout: float) -> tuple[list[Any], list[Any]]:
        ready = self._done.wait(min(timeout, 0.01))
        return (refs, []) if ready else ([], refs)

    def get(self, ref: Any) -> Any:
        if self._error is not None:
            raise self._error
        return self._reply

    def cancel(self, ref: Any, *, force: bool) -> None:
        self.cancelled.append(force)
        self.finish(error=_Exceptions.TaskCancelledError("cancelled"))


class Ctx:
    """The bridge child's TaskContext, recording what it emits."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop_requested = False

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.25  # every loop pass moves time on: no test sleeps for the grace or the head timeout
        return self.t


def _spec(tmp_path: Path, **changes: Any) -> RemoteSpec:
    base = RemoteSpec(
        entry=f"{TASKS}:train", payload={}, key=TaskKey("train", "7", 3), channel=str(tmp_path / "ch"),
        address="127.0.0.1:6379", num_cpus=1.0, memory_bytes=0, num_gpus=None, max_retries=2,
        head_timeout_s=5.0, grace_s=2.0,
    )
    return RemoteSpec(**{**base.to_dict(), **changes, "key": base.key})


def _reply(status: str = "done", **extra: Any) -> dict[str, Any]:
    return {"status": status, "result": {"steps": 3}, "error": None, "node": "n" * 40, "cpu_s": 1.5,
            "wall_s": 2.0, **extra}


def _follow(tmp_path: Path, ray: FakeRay, ctx: Ctx, *, head_up: Callable[[], bool] = lambda: True,
            **changes: Any) -> Any:
    spec = _spec(tmp_path, **changes)
    return follow(ray, object(), spec, Channel(Path(spec.channel)).open(), ctx, clock=Clock(), head_up=head_up)


def test_follow_relays_the_nodes_events_and_returns_the_result(tmp_path: Path) -> None:
    ray, ctx = FakeRay(), Ctx()
    channel = Channel(tmp_path / "ch").open()
    channel.append({"event": "remote", "phase": "started", "node": "a"})
    channel.append({"event": "checkpoint", "step": 1, "path": "/x"})
    ray.finish(_reply())
    assert _follow(tmp_path, ray, ctx) == {"steps": 3}
    assert [e.get("phase", e["event"]) for e in ctx.events] == ["started", "checkpoint", "finished"]
    assert ctx.events[-1]["attempts"] == 1 and ctx.events[-1]["cpu_s"] == 1.5


def test_a_stop_request_writes_the_stop_file_then_force_cancels_after_the_grace(tmp_path: Path) -> None:
    ray, ctx = FakeRay(), Ctx()
    ctx.stop_requested = True
    with pytest.raises(Interrupted, match="cancelled after the stop request"):
        _follow(tmp_path, ray, ctx)
    assert Channel(tmp_path / "ch").stop_requested()
    assert ray.cancelled == [True]  # ray.cancel(force=True), once
    phases = [e["phase"] for e in ctx.events]
    assert phases == ["stopping", "cancelled"]


def test_a_task_ray_cannot_cancel_is_given_up(tmp_path: Path) -> None:
    class Stuck(FakeRay):
        def cancel(self, ref: Any, *, force: bool) -> None:
            self.cancelled.append(force)  # and it never ends

    ray, ctx = Stuck(), Ctx()
    ctx.stop_requested = True
    with pytest.raises(Interrupted, match="did not end 30 s after ray.cancel"):
        _follow(tmp_path, ray, ctx)
    assert ray.cancelled == [True]


def test_connecting_where_no_head_answers_retries_with_backoff_then_gives_up(tmp_path: Path) -> None:
    slept: list[float] = []
    ctx = Ctx()
    with pytest.raises(Interrupted, match="no Ray head answers at 127.0.0.1:1"):  # nothing listens on port 1
        connect("127.0.0.1:1", 10.0, ctx, sleep=slept.append)  # type: ignore[arg-type]
    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0]  # bounded: 15.5 s of waiting covers the 10 s timeout
    assert ctx.events[-1]["phase"] == "unreachable"


def test_a_task_that_stops_within_the_grace_is_not_force_cancelled(tmp_path: Path) -> None:
    ray, ctx = FakeRay(), Ctx()
    ctx.stop_requested = True
    ray.finish(_reply("interrupted"))
    with pytest.raises(Interrupted, match="stopped on request"):
        _follow(tmp_path, ray, ctx)
    assert ray.cancelled == []


def test_a_lost_head_ends_the_follow_loop_as_interrupted(tmp_path: Path) -> None:
    ray, ctx = FakeRay(), Ctx()
    with pytest.raises(HeadLost, match="has not answered"):
        _follow(tmp_path, ray, ctx, head_up=lambda: False)
    assert isinstance(HeadLost("x"), Interrupted)  # the cycle resumes later; it is not failed


@pytest.mark.parametrize(
    ("error", "reply", "expected"),
    [
        (_Exceptions.WorkerCrashedError("node died"), None, Interrupted),  # lost after every retry: resumable
        (_Exceptions.RayTaskError("run_on_node raised"), None, RemoteChildError),
        (None, _reply("failed", error="ValueError: rank"), RemoteChildError),
        (None, _reply("killed", error="SIGKILL"), RemoteChildError),  # OOM: fails, as for a local child
    ],
)
def test_how_a_remote_task_ends(tmp_path: Path, error: Any, reply: Any, expected: type[Exception]) -> None:
    ray = FakeRay()
    ray.finish(reply, error)
    with pytest.raises(expected):
        _follow(tmp_path, ray, Ctx())


# -- the node side, with real child processes and a stand-in for ray's runtime context --------------------------------


@pytest.fixture
def fake_ray_module(monkeypatch: pytest.MonkeyPatch) -> None:
    context = types.SimpleNamespace(get_node_id=lambda: "node0" * 8)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get_runtime_context=lambda: context))


def _knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: Any) -> Path:
    path = tmp_path / "knobs.json"
    path.write_text(json.dumps(values))
    monkeypatch.setenv("TEST_RAY_KNOBS", str(path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return path


def _train_payload(workdir: Path, steps: int = 4) -> dict[str, Any]:
    return {"recipe": standin_recipe(steps=steps).to_dict(), "workdir": str(workdir), "resume_from": None,
            "parent_dir": None}


def test_the_node_side_resumes_from_the_newest_checkpoint_and_measures_its_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_ray_module: None
) -> None:
    _knobs(tmp_path, monkeypatch)
    workdir = tmp_path / "cycles" / "7"
    # A lost attempt got to step 2 after the task was submitted (resume_from None).
    import numpy as np

    save_checkpoint(workdir, 2, lambda d: np.save(d / "weights.npy", np.zeros(8)))
    reply = run_on_node(f"{TASKS}:train", _train_payload(workdir), {"kind": "train"}, str(tmp_path / "ch"), 5.0)
    assert reply["status"] == "done" and reply["node"] == "node0" * 8
    assert reply["result"]["steps"] == 4 and reply["result"]["metrics"]["first_step"] == 3
    assert reply["cpu_s"] > 0  # the child's CPU time counts (RUSAGE_CHILDREN)
    events = Channel(tmp_path / "ch").reader().read()
    assert events[0]["phase"] == "started" and events[0]["resume_from"].endswith("step-00000002")
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [3, 4]


@pytest.mark.parametrize("stubborn", [False, True])
def test_the_node_side_stops_its_child_on_the_stop_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_ray_module: None, stubborn: bool
) -> None:
    pids = tmp_path / "pids.jsonl"
    _knobs(tmp_path, monkeypatch, step_s=0.2, stubborn=stubborn, pids=str(pids))
    channel = Channel(tmp_path / "ch").open()

    def stop_after_first_checkpoint() -> None:
        reader = channel.reader()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(e["event"] == "checkpoint" for e in reader.read()):
            time.sleep(0.05)
        channel.request_stop()

    stopper = threading.Thread(target=stop_after_first_checkpoint)
    stopper.start()
    grace_s = 1.0 if stubborn else 60.0  # a cooperative child exits at its next step, however loaded the machine
    reply = run_on_node(f"{TASKS}:train", _train_payload(tmp_path / "w", steps=500), {}, str(channel.path), grace_s)
    stopper.join()
    # Asked to stop: it checkpoints and exits (75); a stubborn one is killed after the grace.
    assert reply["status"] == ("killed" if stubborn else "interrupted")
    pid = json.loads(pids.read_text().splitlines()[0])["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- the daemon side: keys, epochs, refusals -------------------------------------------------------------------------


class FakeLocal:
    """The daemon's ChildRunner, with the bridge child's events and outcome scripted."""

    def __init__(self, events: list[dict[str, Any]], outcome: ChildOutcome, *,
                 during: Callable[[], None] = lambda: None) -> None:
        self.events, self.outcome, self.during = events, outcome, during
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = False

    def run(self, entry: str, payload: Any, work_dir: Path, *, on_event: Any = None, timeout_s: Any = None
            ) -> ChildOutcome:
        self.calls.append((entry, payload))
        for event in self.events:
            self.during()
            if on_event is not None:
                on_event(event)  # an exception here: ChildRunner stops the child and re-raises it
        return self.outcome

    def request_stop(self) -> bool:
        return False

    def reset(self) -> None:
        pass


def _config(tmp_path: Path) -> QthaConfig:
    return QthaConfig(state_dir=tmp_path / "state", cluster={"address": "127.0.0.1:6379", "memory_gb": 2.0},
                      daemon={"stop_timeout_s": 30.0})


_FINISHED = {"event": "remote", "phase": "finished", "node": "n" * 40, "cpu_s": 12.5, "wall_s": 3.0,
             "status": "done", "attempts": 2}


def test_the_bridge_gets_the_key_the_resources_and_the_grace(tmp_path: Path) -> None:
    local = FakeLocal([{"event": "remote", "phase": "started", "node": "a" * 40}, _FINISHED],
                      ChildOutcome("done", result={"ok": 1}))
    runner = RayRunner(local, lambda: _config(tmp_path), epoch=lambda: 4)  # type: ignore[arg-type]
    outcome = runner.run("agent.child.tasks:train", {"workdir": str(tmp_path / "cycles" / "12")},
                         tmp_path / "cycles" / "12" / "child")
    assert outcome.result == {"ok": 1}
    [(entry, spec)] = local.calls
    assert entry == "agent.child.bridge:run"
    assert spec["key"] == {"kind": "train", "subject": "12", "epoch": 4}
    assert spec["memory_bytes"] == 2 * 2**30 and spec["num_gpus"] is None and spec["grace_s"] == 15.0
    [task] = runner.tasks
    assert task.key.name == "qtha-train-12-e4" and task.status == "done"
    assert task.nodes == ["a" * 40] and task.cpu_s == 12.5


def test_a_result_from_a_stale_epoch_is_refused(tmp_path: Path) -> None:
    epoch = {"now": 4}
    local = FakeLocal([_FINISHED], ChildOutcome("done", result={"ok": 1}),
                      during=lambda: epoch.update(now=5))  # another leader's term began while the task ran
    runner = RayRunner(local, lambda: _config(tmp_path), epoch=lambda: epoch["now"])  # type: ignore[arg-type]
    with pytest.raises(StaleEpochError, match="submitted under lease epoch 4, the lease is now at 5"):
        runner.run("agent.child.tasks:evaluate", {"version_id": "c000003"}, tmp_path / "eval")
    assert runner.tasks[0].status == "refused"


def test_a_checkpoint_after_the_fence_moved_is_refused_and_stops_the_task(tmp_path: Path) -> None:
    def fence() -> None:
        raise StaleEpochError("lease 'leader' epoch 4 is no longer current")

    seen: list[dict[str, Any]] = []
    local = FakeLocal([{"event": "progress", "step": 1}, {"event": "checkpoint", "step": 1, "path": "/c"}],
                      ChildOutcome("done", result={}))
    runner = RayRunner(local, lambda: _config(tmp_path), epoch=lambda: 4, fence=fence)  # type: ignore[arg-type]
    with pytest.raises(StaleEpochError):
        runner.run("agent.child.tasks:train", {"workdir": "/c/9"}, tmp_path / "w", on_event=seen.append)
    assert seen == [{"event": "progress", "step": 1}]  # the refused checkpoint never reached the cycle


def test_a_resubmission_stops_older_submissions_of_the_same_task(tmp_path: Path) -> None:
    work = tmp_path / "cycles" / "12" / "child"
    older = Channel(work / "remote" / "qtha-train-12-e3-0badcafe").open()
    other = Channel(work / "remote" / "qtha-evaluate-c000012-e3-0badcafe").open()
    local = FakeLocal([], ChildOutcome("interrupted"))
    RayRunner(local, lambda: _config(tmp_path), epoch=lambda: 4).run(  # type: ignore[arg-type]
        "agent.child.tasks:train", {"workdir": str(tmp_path / "cycles" / "12")}, work)
    assert older.stop_requested() and not other.stop_requested()


def test_ray_trainer_charges_the_remote_cpu_like_a_local_childs(tmp_path: Path) -> None:
    result = {"artifact_dir": str(tmp_path / "out"), "steps": 3, "metrics": {"train_cpu_s": 10.0}}
    local = FakeLocal([_FINISHED], ChildOutcome("done", result=result))
    trainer = RayTrainer(_config(tmp_path), local)  # type: ignore[arg-type]
    outcome = trainer.train(standin_recipe(), tmp_path / "cycles" / "5", resume_from=None, parent_dir=None,
                            progress=lambda step, ckpt: None)
    # The child's own measurement is what the budget charges, locally and remotely; the node's total is kept.
    assert outcome.metrics["train_cpu_s"] == 10.0 and outcome.metrics["remote_cpu_s"] == 12.5
    assert trainer.nodes == [("train", "n" * 40)]


def test_training_tasks_are_named_by_their_cycle_and_candidate() -> None:
    assert task_subject(Path("/s/cycles/12")) == "12"
    assert task_subject(Path("/s/cycles/12/candidate-2")) == "12.candidate-2"  # a parallel candidate's


@pytest.mark.parametrize(
    ("found", "gpus", "slots"),
    [
        ({"available": {"CPU": 3.0}, "total": {"CPU": 4.0}}, None, 3),
        ({"available": {"CPU": 3.0, "GPU": 1.0}, "total": {"CPU": 4.0, "GPU": 2.0}}, None, 1),  # one GPU free
        ({"available": {"CPU": 3.0, "GPU": 1.0}, "total": {"CPU": 4.0, "GPU": 2.0}}, 0.0, 3),  # GPUs not asked
        ({"available": {"CPU": 0.0}, "total": {"CPU": 4.0}}, None, 1),  # busy: still one (it queues)
        (None, None, 1),  # no head answers
    ],
)
def test_free_slots_from_the_clusters_free_resources(tmp_path: Path, found: Any, gpus: Any, slots: int) -> None:
    outcome = ChildOutcome("done", result=found) if found else ChildOutcome("interrupted", error="no head")
    local = FakeLocal([], outcome)
    config = QthaConfig(state_dir=tmp_path, cluster={"address": "127.0.0.1:6379", "num_gpus": gpus})
    trainer = RayTrainer(config, local)  # type: ignore[arg-type]
    assert trainer.free_slots() == slots
    assert local.calls[0][0] == "agent.child.bridge:resources"
