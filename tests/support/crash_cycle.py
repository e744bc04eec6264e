"""A light process that runs cycles on the stand-in trainer, for the crash test (and for trying the agent).

``python -m tests.support.crash_cycle --state-dir DIR [--url URL] [--cycles N] [--pause]``

It takes the leader lease (a restart under the same holder name starts a new term), repairs what a previous
process left (:meth:`CycleRunner.start`), prints ``{"event": "ready", ...}``, optionally waits for a line on stdin
(``--pause``, so a test can check invariants while nothing moves), resumes the adopted cycle and runs new ones.
Every transition and checkpoint is printed as one JSON line on stdout. No JAX import: it starts in well under
a second.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.cycle.machine import CycleRunner
from agent.store import VersionStateError, open_store
from tests.support.standin_trainer import StandinTrainer, mean_gain_gate, standin_recipe


def _emit(name: str, fields: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps({"event": name, **fields}, default=str) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.crash_cycle", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--url", help="database URL (default: SQLite in the state dir)")
    parser.add_argument("--holder", default="cycle-worker", help="leader lease holder name")
    parser.add_argument("--cycles", type=int, default=1, help="new cycles to run after start-up")
    parser.add_argument("--seed", type=int, default=0, help="seeds the task and the recipes")
    parser.add_argument(
        "--rollback-every", type=int, default=0, help="operator rollback every N cycles (0: never)"
    )
    parser.add_argument("--keep-last", type=int, default=3)
    parser.add_argument("--pause", action="store_true", help="wait for a stdin line after start-up repair")
    args = parser.parse_args(argv)

    store = open_store(args.url or f"sqlite:///{args.state_dir / 'qtha.db'}")
    lease = store.leases.acquire(args.holder, ttl_s=3600)
    owner = f"{args.holder}#{lease.epoch}"
    runner = CycleRunner(
        Registry(store, Layout(args.state_dir)),
        StandinTrainer(task_seed=args.seed),
        mean_gain_gate(0.0),
        owner=owner,
        workdirs=args.state_dir / "cycles",
        keep_last=args.keep_last,
        on_event=_emit,
    )
    adopted = runner.start()
    _emit("ready", {"owner": owner, "adopted": adopted.id if adopted else None})
    if args.pause:
        sys.stdin.readline()
    if adopted is not None:
        runner.resume(adopted)
    rng = random.Random(f"{args.seed}-{lease.epoch}")
    for i in range(args.cycles):
        recipe = standin_recipe(
            steps=rng.randint(4, 12), learning_rate=rng.choice([0.01, 0.03, 0.08]), seed=rng.randrange(10**6)
        )
        runner.run(trigger_reasons=["cycle_worker"], recipe=recipe)
        if args.rollback_every and (i + 1) % args.rollback_every == 0:
            try:
                runner.registry.rollback(actor="operator (cycle_worker)", reason="exercise rollback")
                _emit("rolled_back", {})
            except VersionStateError:
                pass  # nothing to roll back to
        runner.housekeeping()
    store.leases.release(lease)
    store.close()
    _emit("done", {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
