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
from typing import Any

import pytest

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


# -- remote tasks behave like local children (tests/support/ray_remote.py: one cluster, one run, five scenarios) ----


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if importlib.util.find_spec("ray") is None:
        skip_missing_tool("ray", "pip install -e '.[cluster]'")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        skip_missing_tool("root with unshare and ip (a private network namespace)", "run the suite as root")
    work = tmp_path_factory.mktemp("ray-remote")
    out = work / "result.json"
    # Not exec'd: the harness must not be PID 1, or its children take themselves for orphans (agent.child.entry).
    script = f"ip link set lo up && {sys.executable} -m tests.support.ray_remote {out} {work}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    # A PID namespace too: when the harness exits, the kernel ends every process Ray left behind.
    done = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,  # ~5 min idle; 10+ at load 17 on 2 shared cores
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(out.read_text()))


def _scenario(run: dict[str, Any], name: str) -> dict[str, Any]:
    result = run[name]
    assert "error" not in result, result["error"]
    return dict(result)


def test_stopping_a_cycle_stops_its_remote_task_and_the_same_task_resumes_from_its_checkpoint(
    remote_run: dict[str, Any],
) -> None:
    r = _scenario(remote_run, "stop")
    assert r["free_slots"] == 2  # read from the cluster by a one-shot bridge child: two idle one-CPU nodes
    # The daemon's runner was asked to stop (SIGTERM, lost lease, timeout): the remote child checkpointed and
    # exited on its node, the cycle stayed resumable, and no force was needed.
    assert r["stopped"]["state"] == "train" and r["stopped"]["error"] is None
    assert r["task"]["status"] == "interrupted"
    assert r["task"]["phases"] == ["submitted", "started", "stopping", "finished"]
    assert r["child"]["node"] in remote_run["workers"] and r["child_gone_s"] < 15
    # Run again under the same key (cycle, epoch): same working directory, resumed after the newest checkpoint.
    assert r["resubmitted"] == r["task"]["name"] == "qtha-train-1-enone"
    assert r["resumed"]["state"] == "promoted" and r["resumed"]["resumes"] == 1
    assert r["metrics"]["first_step"] == r["checkpoint_at_stop"] + 1 and r["metrics"]["steps"] == 40
    # CPU accounting flows back: the child's own measurement (charged) and the node's total.
    assert 0 < r["metrics"]["train_cpu_s"] <= r["metrics"]["remote_cpu_s"]


def test_a_remote_task_that_ignores_the_stop_is_killed_and_a_queued_one_is_cancelled(
    remote_run: dict[str, Any],
) -> None:
    stubborn = _scenario(remote_run, "stubborn")
    assert stubborn["cycle"]["state"] == "train" and stubborn["status"] == "interrupted"
    assert stubborn["child_gone"]  # SIGKILL on its node after the 4 s grace
    assert "cancelled" not in stubborn["phases"] and stubborn["stop_s"] < 30
    queued = _scenario(remote_run, "queued")  # no node has 1000 GiB: it never started
    assert queued["resources"] == {"num_cpus": 1.0, "memory": 1000 * 2**30}
    assert queued["phases"] == ["submitted", "stopping", "cancelled"]  # ray.cancel(force=True)
    assert queued["cycle"]["state"] == "train" and queued["status"] == "interrupted"


def test_tasks_ask_for_a_gpu_when_the_cluster_has_one(remote_run: dict[str, Any]) -> None:
    r = _scenario(remote_run, "gpu")
    assert r["cycle"]["state"] == "promoted"
    assert r["resources"] == [{"num_cpus": 1.0, "num_gpus": 1.0}] * 2  # training and evaluation
    assert r["nodes"] == [["train", r["gpu_node"]], ["evaluate", r["gpu_node"]]]
    assert r["child"]["gpus"] == "0"  # Ray's assignment reaches the child process
    stop = _scenario(remote_run, "stop")  # before the GPU node joined: no GPU asked for
    assert stop["task"]["resources"] == {"num_cpus": 1.0}


def test_a_killed_bridge_takes_its_remote_task_with_it(remote_run: dict[str, Any]) -> None:
    r = _scenario(remote_run, "bridge_killed")
    assert r["cycle"]["state"] == "failed" and "killed by SIGKILL" in r["cycle"]["error"]
    assert r["child_gone_s"] < 90  # Ray ended the dead driver's job: its worker and the child are gone


def test_a_result_from_a_stale_epoch_is_refused_and_the_next_leader_finishes_the_cycle(
    remote_run: dict[str, Any],
) -> None:
    r = _scenario(remote_run, "stale_epoch")
    assert r["refused"] == {"name": "qtha-train-1-e1", "status": "refused"}
    assert not r["published_by_a"] and r["cycle_a"]["state"] == "train"  # nothing of epoch 1's result written
    assert r["accepted"] == {"name": "qtha-train-1-e2", "status": "done"}
    assert r["cycle_b"]["state"] == "promoted"
    assert r["metrics"]["first_step"] == 6 and r["metrics"]["steps"] == 5  # B resumed after A's last checkpoint


def test_a_lost_head_interrupts_the_cycle_which_resumes_when_a_head_is_back(remote_run: dict[str, Any]) -> None:
    r = _scenario(remote_run, "head_lost")
    assert r["interrupted"]["state"] == "train" and r["interrupted"]["error"] is None
    assert "head-lost" in r["phases"] and r["detect_s"] < 30  # head_timeout_s = 3
    # While no head answers, a try gives up after the timeout (probes with backoff), and the cycle waits.
    assert r["while_down"]["state"] == "train" and r["down_s"] < 30 and r["down_phases"] == ["unreachable"]
    # The nodes gave up on the lost head too: their Ray workers and the remote child are gone.
    assert r["old_child_gone"]
    # A head runs again at the same address: the next try connects and resumes from the checkpoint.
    assert r["resumed"]["state"] == "promoted" and r["resumed"]["resumes"] == 2
    assert r["metrics"]["first_step"] > 1
