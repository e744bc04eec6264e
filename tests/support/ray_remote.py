"""Remote tasks on a local Ray cluster behaving like local children: stopped on request (gracefully, a stubborn
one killed, a queued one cancelled), stopped when their bridge dies, refused when their lease epoch moved on, and
interrupted then resumed when the head is lost and comes back. Writes what happened as JSON for
tests/agent/test_cluster.py, which starts it inside a network namespace of its own (``unshare --net`` with only
``lo`` up), so every Ray component can only listen and connect on loopback.

    python -m tests.support.ray_remote OUT.json WORKDIR

The harness never connects to Ray itself (a Ray driver exits when the head is gone for a minute): every task goes
through :class:`agent.child.remote.RayTrainer`'s bridge children, as in the daemon. Each scenario has its own
database and state directory; ``[daemon] stop_timeout_s = 8`` makes the stop grace 4 s.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.child.remote import RayTrainer, RemoteTask
from agent.child.runner import ChildRunner
from agent.clock import FakeClock
from agent.config import load_config
from agent.cycle.machine import CycleRunner
from agent.cycle.trainer import checkpoint_step, latest_checkpoint
from agent.daemon.leader import Leadership
from agent.store import Cycle, Store, open_store
from tests.support.ray_tasks import KNOBS_ENV, write_knobs
from tests.support.standin_trainer import mean_gain_gate, standin_recipe

TASKS = "tests.support.ray_tasks"
GCS_PORT = 6390  # fixed, so a head started again after the loss listens where the first one did
HEAD_TIMEOUT_S = 3.0
NODE_ENV = {"RAY_gcs_rpc_server_reconnect_timeout_s": "10"}


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Seconds until ``condition()`` held; raises TimeoutError naming ``what``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started


class Rig:
    """One scenario's daemon side: database, registry, the daemon's child runner, the Ray trainer, the cycles."""

    def __init__(self, work: Path, address: str, *, store: Store | None = None, owner: str = "driver#1",
                 epoch: Callable[[], int | None] | None = None, **cluster: Any) -> None:
        self.work = work
        self.store = store or open_store(f"sqlite:///{work / 'qtha.db'}")
        self.registry = Registry(self.store, Layout(work / "state"))
        self.config = load_config(
            None, state_dir=str(work / "state"), daemon={"stop_timeout_s": 8.0},
            cluster={"address": address, "head_timeout_s": HEAD_TIMEOUT_S, **cluster},
        )
        self.local = ChildRunner()  # the daemon's runner: what SIGTERM, a lost lease or a timeout stop
        fencing: dict[str, Any] = {} if epoch is None else {"epoch": epoch, "fence": self.store.check_fence}
        self.trainer = RayTrainer(lambda: self.config, self.local, train_entry=f"{TASKS}:train",
                                  evaluate_entry=f"{TASKS}:evaluate", **fencing)
        self.cycles = CycleRunner(self.registry, self.trainer, mean_gain_gate(-1e9), owner=owner,
                                  workdirs=work / "cycles")
        self.result: list[Cycle] = []
        self.thread: threading.Thread | None = None

    def point_at(self, address: str) -> None:
        """What an operator does after moving the head: a new ``[cluster] address`` (read at the next task)."""
        cluster = self.config.cluster.model_copy(update={"address": address})
        self.config = self.config.model_copy(update={"cluster": cluster})

    def start_cycle(self, steps: int) -> None:
        def run() -> None:
            self.result.append(self.cycles.run(trigger_reasons=["test"], recipe=standin_recipe(steps=steps)))

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self, timeout_s: float = 180) -> Cycle:
        assert self.thread is not None
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the cycle did not return"
        return self.result[-1]

    def resume(self) -> Cycle:
        self.local.reset()
        adopted = self.cycles.start()
        assert adopted is not None
        return self.cycles.resume(adopted)

    def checkpoint(self, cycle_id: int = 1) -> int:
        newest = latest_checkpoint(self.work / "cycles" / str(cycle_id))
        return 0 if newest is None else checkpoint_step(newest)

    def task(self) -> RemoteTask:
        return self.trainer.remote.tasks[-1]


def _pids(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _summary(cycle: Cycle) -> dict[str, Any]:
    return {"state": str(cycle.state), "error": cycle.error, "outcome": cycle.outcome, "resumes": cycle.resumes}


def stop(work: Path, address: str, knobs: Path) -> dict[str, Any]:
    """The daemon's runner is asked to stop mid-training; then the same task (same cycle, same epoch) is run again."""
    pids = work / "pids.jsonl"
    write_knobs(knobs, step_s=0.5, pids=str(pids))
    rig = Rig(work, address)
    free = rig.trainer.free_slots()  # two idle one-CPU nodes
    rig.start_cycle(steps=40)
    wait_for(lambda: rig.checkpoint() >= 2, 120, "a checkpoint of the remote task")
    asked = time.monotonic()
    rig.local.request_stop()  # what SIGTERM of the daemon, a lost lease and a train timeout do
    stopped = rig.join()
    stop_s = time.monotonic() - asked
    child = _pids(pids)[0]
    gone_s = wait_for(lambda: not alive(child["pid"]), 30, "the remote child to exit")
    task = rig.task()
    at_stop = rig.checkpoint()
    write_knobs(knobs, pids=str(pids))
    resumed = rig.resume()
    again = [t for t in rig.trainer.remote.tasks if t.key.kind == "train"][-1]
    version = rig.store.versions.find("c000001")
    return {
        "free_slots": free, "stopped": _summary(stopped), "stop_s": stop_s,
        # The largest child of this process so far: a bridge (the grandchildren belong to Ray's workers).
        "bridge_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "child_gone_s": gone_s, "child": child,
        "task": {"name": task.key.name, "status": task.status, "phases": task.phases, "resources": task.resources},
        "checkpoint_at_stop": at_stop,
        "resumed": _summary(resumed), "resubmitted": again.key.name,
        "metrics": dict(version.metrics) if version else None,
    }


def stubborn(work: Path, address: str, knobs: Path) -> dict[str, Any]:
    """A remote child that ignores the stop request is killed on its node after the grace."""
    pids = work / "pids.jsonl"
    write_knobs(knobs, step_s=0.5, stubborn=True, pids=str(pids))
    rig = Rig(work, address)
    rig.start_cycle(steps=200)
    wait_for(lambda: rig.checkpoint() >= 1, 120, "a checkpoint of the stubborn task")
    asked = time.monotonic()
    rig.local.request_stop()
    cycle = rig.join()
    stop_s = time.monotonic() - asked
    child = _pids(pids)[0]
    gone = not alive(child["pid"])
    rig.cycles.abort(cycle.id, reason="test over")
    task = rig.task()
    return {"cycle": _summary(cycle), "stop_s": stop_s, "child_gone": gone, "status": task.status,
            "phases": task.phases}


def queued(work: Path, address: str, knobs: Path) -> dict[str, Any]:
    """A task no node can take (it asks for 1000 GiB) waits in Ray's queue; a stop cancels it there."""
    write_knobs(knobs)
    rig = Rig(work, address, memory_gb=1000.0)
    rig.start_cycle(steps=4)
    wait_for(lambda: bool(rig.trainer.remote.tasks) and "submitted" in rig.task().phases, 120, "the submission")
    asked = time.monotonic()
    rig.local.request_stop()
    cycle = rig.join()
    stop_s = time.monotonic() - asked
    rig.cycles.abort(cycle.id, reason="test over")
    return {"cycle": _summary(cycle), "stop_s": stop_s, "phases": rig.task().phases, "status": rig.task().status,
            "resources": rig.task().resources}


def gpu(work: Path, cluster: Any, knobs: Path) -> dict[str, Any]:
    """A node with a GPU joins (Ray is told it has one): with ``num_gpus`` unset every task asks for one, so the
    cycle's tasks run there, with the device Ray assigned them visible to the child."""
    pids = work / "pids.jsonl"
    write_knobs(knobs, pids=str(pids))
    node = cluster.add_node(num_cpus=1, num_gpus=1, env_vars=NODE_ENV)
    cluster.wait_for_nodes()
    try:
        rig = Rig(work, cluster.address)
        rig.start_cycle(steps=2)
        cycle = rig.join()
    finally:
        cluster.remove_node(node)
    return {"cycle": _summary(cycle), "gpu_node": node.node_id, "nodes": rig.trainer.nodes,
            "resources": [t.resources for t in rig.trainer.remote.tasks], "child": _pids(pids)[0]}


def bridge_killed(work: Path, address: str, knobs: Path) -> dict[str, Any]:
    """The bridge child is killed outright (SIGKILL: what follows a stop that ran past the daemon's grace, or an
    out-of-memory kill): its Ray job ends, Ray kills the job's task, and the remote child goes with it."""
    pids = work / "pids.jsonl"
    write_knobs(knobs, step_s=0.5, pids=str(pids))
    rig = Rig(work, address)
    rig.start_cycle(steps=200)
    wait_for(lambda: rig.checkpoint() >= 1, 120, "a checkpoint of the remote task")
    bridge = rig.task().bridge_pid
    assert bridge is not None
    os.kill(bridge, signal.SIGKILL)
    cycle = rig.join()
    child = _pids(pids)[0]
    gone_s = wait_for(lambda: not alive(child["pid"]) and not alive(child["worker_pid"]), 90,
                      "the remote child and its Ray worker to exit")
    return {"cycle": _summary(cycle), "child_gone_s": gone_s}


def stale_epoch(work: Path, address: str, knobs: Path) -> dict[str, Any]:
    """Leader A's lease expires while its remote task finishes; B takes the lease (epoch 2). A's result is refused
    and nothing of it is written; B adopts the cycle and finishes it from the checkpoint under its own epoch."""
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    write_knobs(knobs, finish_s=4.0)
    clock = FakeClock()
    url = f"sqlite:///{work / 'qtha.db'}"
    store_a = open_store(url, clock=clock)
    a = Leadership(store_a.leases, "A", ttl_s=30, clock=clock)
    assert a.tick() and a.epoch == 1
    store_a.fence_writes(lambda: a.lease)
    rig_a = Rig(work, address, store=store_a, owner="A#1", epoch=lambda: a.epoch)
    rig_a.start_cycle(steps=5)
    wait_for(lambda: rig_a.checkpoint() >= 5, 120, "A's last checkpoint")
    marks["a_trained"] = time.monotonic() - t0
    clock.advance(60)  # A's term runs out (it was not renewed) ...
    store_b = open_store(url, clock=clock)
    b = Leadership(store_b.leases, "B", ttl_s=30, clock=clock)
    assert b.tick() and b.epoch == 2  # ... and B takes the lease
    store_b.fence_writes(lambda: b.lease)
    cycle_a = rig_a.join()
    marks["a_returned"] = time.monotonic() - t0
    refused = rig_a.task()
    published_by_a = store_b.versions.find("c000001")
    write_knobs(knobs)
    rig_b = Rig(work, address, store=store_b, owner="B#2", epoch=lambda: b.epoch)
    cycle_b = rig_b.resume()
    marks["b_finished"] = time.monotonic() - t0
    accepted = [t for t in rig_b.trainer.remote.tasks if t.key.kind == "train"][-1]
    version = store_b.versions.find("c000001")
    return {
        "cycle_a": _summary(cycle_a), "refused": {"name": refused.key.name, "status": refused.status},
        "published_by_a": published_by_a is not None,
        "cycle_b": _summary(cycle_b), "accepted": {"name": accepted.key.name, "status": accepted.status},
        "metrics": dict(version.metrics) if version else None, "marks": marks,
    }


def start_cluster(workers: int, ports: Iterable[int] = (GCS_PORT, GCS_PORT + 1, GCS_PORT + 2)) -> tuple[Any, list[Any]]:
    """A head (no CPUs: it runs no tasks) on the first of ``ports`` where it starts, and ``workers`` one-CPU nodes;
    the nodes give up on a lost head after 10 s instead of Ray's 60 (as they would, only sooner). On a loaded
    machine a node may miss Ray's fixed 30 s start-up wait: the next port is tried (what a failed start leaves
    behind still holds its port; the PID namespace ends it with the harness)."""
    from ray.cluster_utils import Cluster

    ports = list(ports)
    for i, port in enumerate(ports):
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "gcs_server_port": port, "include_dashboard": False})
            nodes = [cluster.add_node(num_cpus=1, env_vars=NODE_ENV) for _ in range(workers)]
            cluster.wait_for_nodes()
            return cluster, nodes
        except Exception:
            if i == len(ports) - 1:
                raise
            traceback.print_exc()
    raise AssertionError("no ports to try")


def head_lost(work: Path, cluster: Any, workers: list[Any], knobs: Path) -> dict[str, Any]:
    """The head is removed mid-training: the task is given up as interrupted; a try while no head answers is
    interrupted too; the nodes give up on the lost head (their Ray workers and the child exit); once a head runs
    again at the same address, the cycle resumes from its checkpoint."""
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    pids = work / "pids.jsonl"
    write_knobs(knobs, step_s=0.5, pids=str(pids))
    address = cluster.address  # (None once the head is gone)
    rig = Rig(work, address)
    rig.start_cycle(steps=30)
    wait_for(lambda: rig.checkpoint() >= 2, 120, "a checkpoint before the head is lost")
    marks["trained"] = time.monotonic() - t0
    lost = time.monotonic()
    cluster.remove_node(cluster.head_node, allow_graceful=False)
    interrupted = rig.join()
    detect_s = time.monotonic() - lost
    first = rig.task()
    tried = time.monotonic()
    while_down = rig.resume()
    down_s = time.monotonic() - tried
    down_task = rig.task()
    old_child = _pids(pids)[0]
    nodes_gone_s = wait_for(lambda: not any(w.any_processes_alive() for w in workers), 90,
                            "the nodes to give up on the lost head")
    child_gone = not alive(old_child["pid"])
    marks["nodes_gone"] = time.monotonic() - t0
    write_knobs(knobs, pids=str(pids))
    port = int(address.rsplit(":", 1)[1])
    # A head again at the same address (the daemon reconnects); should it fail to start on this loaded machine, one
    # at a new address that [cluster] address is pointed at (the daemon rebuilds, as after an edit and SIGHUP).
    again, _ = start_cluster(1, (port, port + 10, port + 11))
    same_address = again.address == address
    if not same_address:
        rig.point_at(again.address)
    marks["head_back"] = time.monotonic() - t0
    try:
        resumed = rig.resume()
        version = rig.store.versions.find("c000001")
    finally:
        again.shutdown()
    marks["resumed"] = time.monotonic() - t0
    return {
        "interrupted": _summary(interrupted), "detect_s": detect_s, "phases": first.phases,
        "while_down": _summary(while_down), "down_s": down_s, "down_phases": down_task.phases,
        "nodes_gone_s": nodes_gone_s, "old_child_gone": child_gone, "same_address": same_address,
        "resumed": _summary(resumed), "metrics": dict(version.metrics) if version else None, "marks": marks,
    }


def main(out: Path, work: Path) -> None:
    knobs = work / "knobs.json"
    os.environ[KNOBS_ENV] = str(knobs)  # the nodes' processes inherit it: set before they start
    write_knobs(knobs)
    result: dict[str, Any] = {}
    cluster, workers = start_cluster(2)
    try:
        result["workers"] = [w.node_id for w in workers]
        address = cluster.address
        scenarios: list[tuple[str, Callable[[Path], dict[str, Any]]]] = [
            ("stop", lambda w: stop(w, address, knobs)),
            ("stubborn", lambda w: stubborn(w, address, knobs)),
            ("queued", lambda w: queued(w, address, knobs)),
            ("gpu", lambda w: gpu(w, cluster, knobs)),
            ("bridge_killed", lambda w: bridge_killed(w, address, knobs)),
            ("stale_epoch", lambda w: stale_epoch(w, address, knobs)),
            ("head_lost", lambda w: head_lost(w, cluster, workers, knobs)),  # last: it takes the head away
        ]
        only = set(os.environ.get("RAY_REMOTE_SCENARIOS", "").split(",")) - {""}
        for name, scenario in scenarios:
            if only and name not in only:
                continue
            (work / name).mkdir()
            started = time.monotonic()
            try:
                result[name] = scenario(work / name)
            except Exception:  # report which scenario broke and go on: the test names it
                result[name] = {"error": traceback.format_exc()}
            result[name]["took_s"] = time.monotonic() - started
            out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    finally:
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
