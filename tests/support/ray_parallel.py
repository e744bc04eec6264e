"""Runs the daemon's cycles with parallel candidates on a local three-node Ray cluster (a zero-CPU head, two
one-CPU workers) and writes what happened as JSON. Started by tests/agent/test_cluster.py inside a network
namespace of its own (``unshare --net`` with only ``lo`` up), so every Ray component stays on loopback.

The daemon's own driver plans the cycles (``[cluster] parallel_candidates = 3``, capped at the cluster's two free
CPUs), so this exercises the planner, the learner's trials, the parallel training over
:class:`agent.child.remote.RayTrainer` and the corrected gate together.

    python -m tests.support.ray_parallel OUT.json WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import policies
from agent.child.remote import RayTrainer
from agent.config import load_config
from agent.daemon.commands import RUN_NOW_KEY
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime
from agent.daemon.policy_inputs import recipe_config
from agent.daemon.runtime import Runtime
from tests.support.ray_tasks import KNOBS_ENV, write_knobs


def _cycle(rt: Runtime, driver: PolicyCycleDriver) -> dict[str, Any]:
    rt.store.overrides.set(RUN_NOW_KEY, {"recipe": {}}, actor="test", reason="a cycle of the learner's recipes")
    driver.consider(rt)
    cycle = rt.store.cycles.list(limit=1)[0]
    [selection] = rt.store.decisions.list(kind="selection", cycle_id=cycle.id) or [None]
    return {
        "id": cycle.id,
        "state": str(cycle.state),
        "error": cycle.error,
        "candidate": cycle.candidate_id,
        "candidates": [
            {"slot": c.slot, "state": str(c.state), "version": c.version_id, "trial": c.plan.get("trial"),
             "outcome": c.outcome}
            for c in rt.store.candidates.of_cycle(cycle.id)
        ],
        "selection": None if selection is None else {"action": selection.action, **dict(selection.evidence)},
    }


def _wait_idle(ray: Any, cpus: float, timeout_s: float = 30.0) -> None:
    """Until the cluster reports all ``cpus`` free (its resource view lags the end of the last tasks)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0.0) < cpus:
        time.sleep(0.2)


def main(out: Path, work: Path) -> None:
    import optuna
    import ray
    from ray.cluster_utils import Cluster

    knobs = work / "knobs.json"
    os.environ[KNOBS_ENV] = str(knobs)  # the nodes' processes inherit it: set before they start
    log = work / "trainings.jsonl"
    write_knobs(knobs, hold_s=2.0, trainings=str(log))  # each training lasts 2 s at least and says where it ran
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no tasks
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    _wait_idle(ray, 2.0)
    config = load_config(
        None,
        state_dir=str(work / "state"),
        metrics={"enabled": False},
        scheduler={"lease_ttl_s": 3600.0},  # no daemon loop renews the lease here
        training={"steps": 12},
        policy={"promotion_floor": -1e9, "cooldown_s": 0, "min_slice_examples": 5},
        cluster={"parallel_candidates": 3, "address": cluster.address},
    )
    tasks = "tests.support.ray_tasks"

    def ray_trainer(rt: Runtime) -> RayTrainer:  # the daemon's wiring (agent.cli.wiring), with the stand-in's tasks
        return RayTrainer(lambda: rt.config, rt.runner, epoch=lambda: rt.leadership.epoch,
                          fence=rt.store.check_fence, train_entry=f"{tasks}:train", evaluate_entry=f"{tasks}:evaluate")

    driver = PolicyCycleDriver(ray_trainer)
    rt = build_runtime(config, cycles=driver)
    trainer = driver.trainer(rt)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        assert rt.leadership.tick(), "could not take the leader lease"
        result: dict[str, Any] = {"workers": [w.node_id for w in workers], "free_slots": trainer.free_slots()}
        first = _cycle(rt, driver)  # no champion yet: the better candidate is promoted
        _wait_idle(ray, 2.0)
        second = _cycle(rt, driver)  # against the champion, under Holm's correction
        study = optuna.load_study(
            study_name=policies.study_name_for(recipe_config(rt.config)), storage=driver.planner.storage(rt)
        )
        result |= {
            "cycles": [first, second],
            "trainings": [json.loads(line) for line in log.read_text().splitlines()],
            "tasks": [[t.key.kind, t.nodes] for t in trainer.remote.tasks],
            "trials": {t.number: t.state.name for t in study.get_trials(deepcopy=False)},
            "champion": rt.store.champion.get().version_id,
        }
        out.write_text(json.dumps(result), encoding="utf-8")
    finally:
        rt.store.close()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
