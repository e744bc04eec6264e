"""Runs cycles with :class:`agent.child.remote.RayTrainer` on a local three-node Ray cluster and writes what
happened as JSON. Started by tests/agent/test_cluster.py inside a network namespace of its own (``unshare --net``
with only ``lo`` up), so every Ray component can only listen and connect on loopback.

    python -m tests.support.ray_cycle OUT.json WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.child.remote import RayTrainer
from agent.child.runner import ChildRunner
from agent.config import load_config
from agent.cycle.machine import CycleRunner
from agent.store import open_store
from tests.support.ray_tasks import KNOBS_ENV, write_knobs
from tests.support.standin_trainer import mean_gain_gate, standin_recipe

TASKS = "tests.support.ray_tasks"


def ray_trainer(address: str, state: Path) -> RayTrainer:
    """A :class:`RayTrainer` running the stand-in's child tasks (:mod:`tests.support.ray_tasks`) on ``address``."""
    config = load_config(None, state_dir=str(state), cluster={"address": address})
    return RayTrainer(config, ChildRunner(), train_entry=f"{TASKS}:train", evaluate_entry=f"{TASKS}:evaluate")


def main(out: Path, work: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    knobs = work / "knobs.json"
    os.environ[KNOBS_ENV] = str(knobs)  # the nodes' processes inherit it: set before they start
    write_knobs(knobs, task_seed=1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no tasks
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    result: dict[str, object] = {
        "head": ray.get_runtime_context().get_node_id(),
        "workers": [w.node_id for w in workers],
    }
    store = open_store(f"sqlite:///{work / 'qtha.db'}")
    registry = Registry(store, Layout(work / "state"))

    # 1. A cycle trained and evaluated on the workers, promoted by the driver.
    trainer = ray_trainer(cluster.address, work / "state")
    runner = CycleRunner(registry, trainer, mean_gain_gate(), owner="driver#1", workdirs=work / "cycles")
    cycle = runner.run(trigger_reasons=["test"], recipe=standin_recipe(steps=6))
    result["cycle1"] = {"state": str(cycle.state), "nodes": trainer.nodes}

    # 2. The node training the next candidate is removed mid-training: Ray reruns the task on the survivor.
    marker = work / "train-nodes.txt"
    write_knobs(knobs, task_seed=1, delay_s=4.0, marker=str(marker))
    slow = ray_trainer(cluster.address, work / "state")
    runner2 = CycleRunner(registry, slow, mean_gain_gate(-1e9), owner="driver#1", workdirs=work / "cycles")

    def kill_the_training_node() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.1)
        first = marker.read_text().split()[0]
        victim = next(w for w in workers if w.node_id == first)
        cluster.remove_node(victim, allow_graceful=False)
        result["killed"] = first

    killer = threading.Thread(target=kill_the_training_node)
    killer.start()
    cycle2 = runner2.run(trigger_reasons=["test"], recipe=standin_recipe(steps=6, seed=1))
    killer.join()
    result["cycle2"] = {
        "state": str(cycle2.state),
        "error": cycle2.error,
        "nodes": slow.nodes,
        "train_attempts": marker.read_text().split(),
    }
    result["champion"] = store.champion.get().version_id
    result["champion_intact"] = registry.serving() is not None
    out.write_text(json.dumps(result), encoding="utf-8")
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
