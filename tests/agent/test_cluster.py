"""Cycles on a local multi-node Ray cluster (``[cluster]``, :class:`agent.child.remote.RayTrainer`).

The cluster runs in a network namespace the test creates (``unshare --net``, only ``lo`` up): Ray binds the
machine's own interface address by default and forcing 127.0.0.1 has hung upstream, so the namespace is what keeps
every Ray component on loopback. Needs root (for ``unshare``) and Ray (the ``cluster`` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.tools import skip_missing_tool

ROOT = Path(__file__).resolve().parents[2]


def _in_a_private_network(module: str, tmp_path: Path) -> dict:
    """Runs ``python -m <module> OUT WORKDIR`` in a network namespace of its own (only ``lo`` up); its JSON."""
    if importlib.util.find_spec("ray") is None:  # .ci/tools installs it; under CI=true a skip here fails
        skip_missing_tool("ray", "pip install -e '.[cluster]'")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        skip_missing_tool("root with unshare and ip (a private network namespace)", "run the suite as root")
    out = tmp_path / "result.json"
    script = f"ip link set lo up && exec {sys.executable} -m {module} {out} {tmp_path}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_a_cycle_trains_and_evaluates_on_ray_workers_and_survives_a_lost_node(tmp_path: Path) -> None:
    result = _in_a_private_network("tests.support.ray_cycle", tmp_path)
    workers = set(result["workers"])
    # 1. Training and both evaluations ran as Ray tasks on the worker nodes, never on the (zero-CPU) head.
    cycle1 = result["cycle1"]
    assert cycle1["state"] == "promoted"
    assert [kind for kind, _ in cycle1["nodes"]] == ["train", "evaluate"]  # no champion yet: one evaluation
    assert {node for _, node in cycle1["nodes"]} <= workers
    # 2. The node training the second candidate was removed: the task ran again on the survivor.
    cycle2 = result["cycle2"]
    attempts = cycle2["train_attempts"]
    assert result["killed"] == attempts[0]
    assert len(attempts) == 2 and attempts[1] != attempts[0] and attempts[1] in workers
    assert cycle2["state"] == "promoted", cycle2["error"]
    assert result["champion_intact"]


def test_two_parallel_candidates_train_at_once_on_different_nodes_and_at_most_one_is_promoted(
    tmp_path: Path,
) -> None:
    result = _in_a_private_network("tests.support.ray_parallel", tmp_path)
    workers = set(result["workers"])
    # parallel_candidates = 3, but the cluster has two free CPUs (one task each): the planner asks two trials.
    assert result["free_slots"] == 2
    for cycle in result["cycles"]:
        assert len(cycle["candidates"]) == 2, cycle
        # Both candidates trained as Ray tasks, at the same time, one on each worker node.
        runs = [t for t in result["trainings"] if Path(t["workdir"]).relative_to(tmp_path / "state" / "cycles").parts[0]
                == str(cycle["id"])]
        assert len(runs) == 2 and {r["node"] for r in runs} == workers
        assert max(r["start"] for r in runs) < min(r["end"] for r in runs)  # the intervals overlap
        # At most one promoted, the other rejected with the reason; the cycle's candidate is the chosen one.
        states = sorted(c["state"] for c in cycle["candidates"])
        assert (states == ["chosen", "rejected"]) if cycle["state"] == "promoted" else ("chosen" not in states)
        chosen = [c["version"] for c in cycle["candidates"] if c["state"] == "chosen"]
        assert chosen == ([cycle["candidate"]] if cycle["state"] == "promoted" else [])
        assert cycle["selection"]["winner"] == (chosen[0] if chosen else None)
    first, second = result["cycles"]
    assert first["state"] == "promoted" and first["selection"]["correction"] == "none"  # no champion to test against
    assert second["selection"]["correction"] == "holm"
    assert result["champion"] == (second["candidate"] if second["state"] == "promoted" else first["candidate"])
    # Four trials asked (two per cycle), every one told its outcome.
    told = {c["trial"] for cycle in result["cycles"] for c in cycle["candidates"]}
    assert told == {0, 1, 2, 3} and all(result["trials"][str(t)] in ("COMPLETE", "FAIL") for t in told)


_NO_RAY = """
import sys
from pathlib import Path
from agent.cli.wiring import model_trainer
from agent.config import load_config
from agent.daemon.driver import PolicyCycleDriver
from agent.daemon.lifecycle import build_runtime

state = Path(sys.argv[1])
for cluster in ({}, {"address": "ray://nowhere:10001"}):
    rt = build_runtime(load_config(None, state_dir=str(state), cluster=cluster), cycles=PolicyCycleDriver(model_trainer))
    trainer = model_trainer(rt)
    print(type(trainer.inner).__name__, "ray" in sys.modules)  # the usage-pool wrapper around it
    rt.store.close()
"""


def test_the_embedded_default_does_not_import_ray_and_a_cluster_address_imports_it_only_when_used(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QTHA_")} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _NO_RAY, str(tmp_path / "state")], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["ChildTrainer False", "RayTrainer False"]
