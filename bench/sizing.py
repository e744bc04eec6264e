"""Sizing: database statements per daemon job, per training cycle and per served request, and artifact bytes per
version — the measured half of the sizing table in docs/scaling.md. Not a test: run it by hand.

Statements are counted with SQLAlchemy's ``before_cursor_execute`` event on the store's engine (one count per
statement sent, an executemany batch counting once), transactions with its ``commit``/``rollback`` events and pool
check-outs with the pool's ``checkout`` event. On PostgreSQL a transaction costs two more round trips (BEGIN, COMMIT)
and a check-out one (``pool_pre_ping``): round trips ≈ statements + 2 × transactions + check-outs (SQLite's explicit
``BEGIN IMMEDIATE`` is a counted statement there, so it is taken out of the statements).

The daemon is the real one (``build_runtime``, the scheduler's job functions, ``PolicyCycleDriver``) with the
stand-in trainer of the tests (milliseconds, no JAX), so a cycle's database traffic is the daemon's and not the
model's. The serving side calls what ``qtha serve`` calls: the follower's and the canary router's polls and the usage
writer's batched ``record_many``. Artifact bytes are measured by saving a fresh adapter of the default recipes on
the bundled model (``--no-model`` skips that: it loads SmolLM2-135M, ~30 s).

    .venv/bin/python bench/sizing.py                 # a throwaway PostgreSQL (else SQLite), 3 cycles, the model
    .venv/bin/python bench/sizing.py --url sqlite:////tmp/s.db --cycles 1 --no-model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event  # noqa: E402

from agent.config import load_config  # noqa: E402
from agent.daemon import jobs  # noqa: E402
from agent.daemon.driver import PolicyCycleDriver  # noqa: E402
from agent.daemon.leader import Leadership  # noqa: E402
from agent.daemon.lifecycle import build_runtime  # noqa: E402
from agent.daemon.runtime import Runtime  # noqa: E402
from agent.store import UsageRecord  # noqa: E402
from tests.support.standin_trainer import StandinTrainer  # noqa: E402


@dataclass
class Count:
    """What one measured step sent to the database."""

    what: str
    statements: int = 0
    transactions: int = 0
    checkouts: int = 0
    verbs: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def round_trips(self) -> int:
        return self.statements - self.verbs.get("BEGIN", 0) + 2 * self.transactions + self.checkouts


class StatementCounter:
    """Counts what an engine sends, between :meth:`measure` calls."""

    def __init__(self, engine: Any) -> None:
        self._statements = 0
        self._transactions = 0
        self._checkouts = 0
        self._verbs: Tally[str] = Tally()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._transaction)
        event.listen(engine, "rollback", self._transaction)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self._statements += 1
        self._verbs[statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"] += 1

    def _transaction(self, _conn: Any) -> None:
        self._transactions += 1

    def _checkout(self, *_args: Any) -> None:
        self._checkouts += 1

    @contextlib.contextmanager
    def measure(self, what: str) -> Iterator[Count]:
        before = (self._statements, self._transactions, self._checkouts, Tally(self._verbs))
        count = Count(what)
        try:
            yield count
        finally:
            count.statements = self._statements - before[0]
            count.transactions = self._transactions - before[1]
            count.checkouts = self._checkouts - before[2]
            count.verbs = dict(sorted((self._verbs - before[3]).items()))


# The daemon's defaults ([scheduler], [serve]): how often each measured step runs.
def _rates(rt: Runtime) -> dict[str, float]:
    sched, serve = rt.config.scheduler, rt.config.serve
    loop_s = min(sched.lease_ttl_s / 3, sched.lease_ttl_s, 5.0)  # the main loop's lease tick (no systemd watchdog)
    return {
        "lease tick (leader renews)": 1 / loop_s,
        "lease tick (standby tries)": 1 / loop_s,
        "commands job (queue empty)": 1 / sched.commands_interval_s,
        "gauges job": 1 / sched.commands_interval_s,
        "consider job (trigger waits)": 1 / sched.consider_interval_s,
        "ingest job (inbox empty)": 1 / sched.ingest_interval_s,
        "live job (live signals)": 1 / sched.live_interval_s,
        "evaluate job (champion)": 1 / sched.evaluate_interval_s,
        "housekeeping job": 1 / sched.housekeeping_interval_s,
        "serve: champion poll": 1 / serve.poll_interval_s,
        "serve: canary poll": 1 / serve.poll_interval_s,
    }


def _runtime(url: str, state_dir: Path, *, steps: int) -> Runtime:
    config = load_config(
        None,
        state_dir=str(state_dir),
        database={"url": url},
        metrics={"enabled": False},
        training={"steps": steps},
        policy={"promotion_floor": -1e9, "cooldown_s": 0, "min_slice_examples": 5},  # stand-in scores are negative
    )
    return build_runtime(config, cycles=PolicyCycleDriver(lambda rt: StandinTrainer()))


def measure_daemon(
    url: str, *, cycles: int, steps: int, usage_s: float
) -> tuple[list[Count], list[Count], dict[str, float], dict[str, float]]:
    """``(cycles, steady steps, rates, usage)``: one count per cycle, one per periodic step, each step's rate per s,
    and the usage log's closed-loop write rate."""
    with tempfile.TemporaryDirectory(prefix="qtha-sizing-") as tmp:
        rt = _runtime(url, Path(tmp) / "state", steps=steps)
        counter = StatementCounter(rt.store.engine)
        try:
            assert rt.leadership.tick(), "another holder leads this database: give --url an empty one"
            jobs.resume_cycle(rt)  # start-up: adopt, reconcile, housekeeping
            per_cycle = []
            for n in range(cycles):
                if n == 0:
                    rt.store.commands.submit("resume", {}, key=f"resume-{uuid.uuid4()}", actor="bench")
                rt.store.commands.submit(
                    "cycle", {"recipe": {"steps": steps}}, key=f"cycle-{uuid.uuid4()}", actor="bench"
                )
                with counter.measure(f"cycle {n + 1}") as count:
                    jobs.apply_commands(rt)
                    jobs.consider_cycle(rt)
                last = rt.store.cycles.list(limit=1)[0]
                count.note = f"{last.state} after {steps} steps"
                per_cycle.append(count)
            standby = Leadership(rt.store.leases, "bench-standby", ttl_s=rt.config.scheduler.lease_ttl_s, clock=rt.clock)
            steady: list[Count] = []
            steps_to_measure: list[tuple[str, Callable[[], Any]]] = [
                ("lease tick (leader renews)", rt.leadership.tick),
                ("lease tick (standby tries)", standby.tick),
                ("commands job (queue empty)", lambda: jobs.apply_commands(rt)),
                ("gauges job", lambda: jobs.refresh_gauges(rt)),
                ("consider job (trigger waits)", lambda: jobs.consider_cycle(rt)),
                ("ingest job (inbox empty)", lambda: jobs.ingest_inbox(rt)),
                ("live job (live signals)", lambda: jobs.observe_live_signals(rt)),
                ("evaluate job (champion)", lambda: jobs.evaluate_champion(rt)),
                ("housekeeping job", lambda: jobs.housekeeping(rt)),
            ]
            steps_to_measure.append((  # what the model trainer's observer writes per reported step (not the stand-in)
                "train_loss sample (per step)",
                lambda: rt.store.metrics.record(
                    "train_loss", 0.5, source="trainer", labels={"cycle": "1", "step": "1", "of": "60"}
                ),
            ))
            for what, step in steps_to_measure:
                step()  # once to warm caches (the first run of a job may create rows)
                with counter.measure(what) as count:
                    step()
                steady.append(count)
            steady += measure_serving(rt, counter)
            return per_cycle, steady, _rates(rt), usage_throughput(rt, seconds=usage_s)
        finally:
            rt.leadership.release()
            rt.store.close()


def _usage(version_id: str, at: Any) -> UsageRecord:
    return UsageRecord(
        request_id=str(uuid.uuid4()),
        at=at,
        version_id=version_id,
        status=200,
        error=None,
        messages=({"role": "user", "content": "What is 12 + 30?"},),
        answers=("42",),
        finish_reasons=("stop",),
        sampling={"temperature": 0.0, "max_tokens": 16},
        latency_s=0.5,
        ttft_s=0.1,
        prompt_tokens=20,
        completion_tokens=2,
    )


def measure_serving(rt: Runtime, counter: StatementCounter) -> list[Count]:
    """What one ``qtha serve`` process sends: its two polls, and the usage writer's batches (1 request in a quiet
    moment, 16 and 256 — the writer's largest batch — under load) and its pruning (once a minute)."""
    out = []
    champion = rt.store.champion.get().version_id or "base"
    for what, step in (
        ("serve: champion poll", rt.store.champion.get),
        ("serve: canary poll", lambda: rt.store.overrides.get("canary")),
    ):
        with counter.measure(what) as count:
            step()
        out.append(count)
    for batch in (1, 16, 256):
        records = [_usage(champion, rt.clock.now()) for _ in range(batch)]
        with counter.measure(f"serve: usage batch of {batch}") as count:
            rt.store.usage.record_many(records)
        out.append(count)
        count.note = f"{count.round_trips / batch:.3f} round trips per request"
    with counter.measure("serve: feedback on a request") as count:
        rt.store.usage.add_feedback(records[0].request_id, score=1.0)
    out.append(count)
    with counter.measure("serve: usage prune") as count:
        rt.store.usage.prune(before=rt.clock.now() - timedelta(days=30), max_bytes=256 * 2**20)
    out.append(count)
    return out


def usage_throughput(rt: Runtime, *, seconds: float, batch: int = 256) -> dict[str, float]:
    """One usage writer in a closed loop (batches of the writer's largest size, as under heavy traffic): how many
    served requests per second one database can log from one server process."""
    if seconds <= 0:
        return {}
    champion = rt.store.champion.get().version_id or "base"
    rows, commits, began = 0, 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        rows += rt.store.usage.record_many([_usage(champion, rt.clock.now()) for _ in range(batch)])
        commits += 1
    elapsed = time.perf_counter() - began
    return {"batch": batch, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed, 1),
            "commits_per_s": round(commits / elapsed, 2)}


def measure_artifacts() -> list[dict[str, Any]]:
    """Bytes of a version of the bundled model's adapter: a fresh adapter of each default recipe, saved as the
    trainer saves it, plus the version's digest manifest."""
    import jax  # noqa: F401  (the model package needs it; imported here so --no-model never loads it)
    from flax import nnx

    from agent.artifacts import layout as artifacts
    from agent.artifacts.layout import Layout
    from agent.child.tasks import adapter_config_for
    from model import load_checkpoint
    from model.adapters import inject_adapters
    from model.artifacts import save_adapter
    from policies import Recipe

    config = load_config(None)
    bounds = config.recipe
    recipes = {
        "qtha (cold start)": Recipe(
            adapter="qtha", qnn_mode=bounds.qnn_mode, qubits=bounds.qubits, layers=bounds.layers,
            bond_dim=bounds.bond_dim, rank=bounds.rank, learning_rate=0.01, steps=1, backend="jax",
            batch_size=1, seed=0,
        ),
        "lora r=8": Recipe(
            adapter="lora", qnn_mode=None, qubits=0, layers=0, bond_dim=0, rank=8, learning_rate=0.01, steps=1,
            backend="jax", batch_size=1, seed=0,
        ),
    }
    rows = []
    for name, recipe in recipes.items():
        loaded = load_checkpoint(config.model.source)  # fresh: adapters are injected in place
        inject_adapters(loaded.model, adapter_config_for(recipe), rngs=nnx.Rngs(0))
        with tempfile.TemporaryDirectory(prefix="qtha-sizing-") as tmp:
            source = Path(tmp) / "adapter"
            save_adapter(loaded.model, source, base_fingerprint=loaded.fingerprint)
            art = artifacts.publish(Layout(Path(tmp) / "state"), "v1", source, metadata={"adapter_kind": recipe.adapter})
            sizes = {p.name: p.stat().st_size for p in art.path.iterdir()}
        rows.append({"adapter": name, "targets": list(recipe.targets), "files": sizes, "bytes": sum(sizes.values())})
    return rows


@contextlib.contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    # The same throwaway server the tests start.
    from tests.support.postgres import PostgresUnavailableError, temporary_postgres

    try:
        server_cm = temporary_postgres()
        server = server_cm.__enter__()
    except PostgresUnavailableError as exc:
        print(f"# no PostgreSQL ({exc}); measuring on SQLite", file=sys.stderr)
    else:
        try:
            yield server.create_database()
        finally:
            server_cm.__exit__(None, None, None)
        return
    with tempfile.TemporaryDirectory(prefix="qtha-sizing-db-") as tmp:
        yield f"sqlite:///{tmp}/qtha.db"


def _print(
    per_cycle: list[Count], steady: list[Count], rates: dict[str, float], usage: dict[str, float],
    arts: list[dict[str, Any]], url: str,
) -> None:
    print(f"# database: {url.split('://', 1)[0]}; round trips = statements + 2 x transactions + check-outs")
    print(f"{'step':<32} {'stmts':>6} {'tx':>4} {'ckout':>6} {'trips':>6} {'per s':>8} {'trips/s':>8}  verbs / note")
    for c in per_cycle:
        print(f"{c.what:<32} {c.statements:>6} {c.transactions:>4} {c.checkouts:>6} {c.round_trips:>6} {'':>8} {'':>8}  "
              f"{c.verbs} {c.note}")
    total = 0.0
    for c in steady:
        rate = rates.get(c.what)
        trips_s = c.round_trips * rate if rate else None
        total += trips_s or 0.0
        print(
            f"{c.what:<32} {c.statements:>6} {c.transactions:>4} {c.checkouts:>6} {c.round_trips:>6} "
            f"{'' if rate is None else f'{rate:.4f}':>8} {'' if trips_s is None else f'{trips_s:.3f}':>8}  "
            f"{c.verbs} {c.note}"
        )
    print(f"# idle leader + 1 standby + 1 serve process at the default intervals: {total:.2f} round trips/s")
    if usage:
        print(f"# usage log, one writer, closed loop, batches of {usage['batch']:.0f}: {usage['rows_per_s']:.0f} "
              f"requests/s logged ({usage['commits_per_s']:.1f} commits/s over {usage['seconds']:.1f} s)")
    for a in arts:
        print(f"artifact {a['adapter']:<20} {a['bytes']:>10} bytes  {a['files']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a database URL (default: a throwaway PostgreSQL, else SQLite)")
    parser.add_argument("--cycles", type=int, default=3, help="cycles to run and count")
    parser.add_argument("--steps", type=int, default=12, help="training steps per cycle (stand-in trainer)")
    parser.add_argument("--usage-seconds", type=float, default=5.0, help="closed-loop usage log writes (0: skip)")
    parser.add_argument("--no-model", action="store_true", help="skip the artifact bytes (no model, no JAX)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    with _database(args.url) as url:
        per_cycle, steady, rates, usage = measure_daemon(
            url, cycles=args.cycles, steps=args.steps, usage_s=args.usage_seconds
        )
    arts = [] if args.no_model else measure_artifacts()
    if args.json:
        print(json.dumps({
            "database": url.split("://", 1)[0],
            "cycles": [asdict(c) | {"round_trips": c.round_trips} for c in per_cycle],
            "steady": [asdict(c) | {"round_trips": c.round_trips, "per_s": rates.get(c.what)} for c in steady],
            "usage_log": usage,
            "artifacts": arts,
        }))
    else:
        _print(per_cycle, steady, rates, usage, arts, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
