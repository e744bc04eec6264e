"""Store load: N simulated replicas heartbeating the leader lease and writing metric samples against PostgreSQL.

Each replica is a thread with its own engine (its own connections, as a separate host would have). Every round it
ticks its :class:`agent.daemon.leader.Leadership` (the leader renews; standbys try to acquire and are refused) and
writes a batch of metric samples in one transaction, then sleeps ``--interval`` seconds (0: closed loop, as fast as
the database answers: the database's capacity). Prints, per N, operations/s and p50/p99 latency of each operation,
and whether one leader held the lease throughout. Not a test: run it by hand.

    .venv/bin/python bench/store_load.py                        # a throwaway local server, N = 1 2 4 … 64
    .venv/bin/python bench/store_load.py --replicas 8 32 128 --seconds 10 --url postgresql+psycopg://u@db/qtha
    .venv/bin/python bench/store_load.py --interval 1 --replicas 64 256   # paced: heartbeats once a second each
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from agent.clock import SystemClock  # noqa: E402
from agent.daemon.leader import Leadership  # noqa: E402
from agent.store import open_store  # noqa: E402


@dataclass(frozen=True)
class Row:
    replicas: int
    seconds: float
    ops_per_s: float
    lease_ops: int
    lease_p50_ms: float
    lease_p99_ms: float
    write_ops: int
    write_p50_ms: float
    write_p99_ms: float
    samples_per_s: float
    leaders_seen: int  # distinct holders that believed they led at some point (1: no flapping under load)
    errors: int


def _replica(
    index: int,
    url: str,
    *,
    stop: threading.Event,
    start: threading.Barrier,
    done: threading.Barrier,
    interval_s: float,
    ttl_s: float,
    batch: int,
    lease_ms: list[float],
    write_ms: list[float],
    leaders: set[str],
    errors: list[str],
) -> None:
    clock = SystemClock()
    store = open_store(url, clock=clock)
    holder = f"bench-{index}"
    leadership = Leadership(store.leases, holder, ttl_s=ttl_s, clock=clock)
    labels = {"replica": holder}
    try:
        start.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            if leadership.tick():
                leaders.add(holder)
            t1 = time.perf_counter()
            try:
                store.metrics.record_many(
                    ((f"bench_metric_{k}", float(k), labels) for k in range(batch)), source="bench"
                )
            except Exception as exc:  # count and go on: the figure is how the database copes
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            t2 = time.perf_counter()
            lease_ms.append((t1 - t0) * 1e3)
            write_ms.append((t2 - t1) * 1e3)
            if interval_s > 0:
                stop.wait(interval_s)
        done.wait()  # release only once every replica stopped ticking, or a standby would take over at the end
        leadership.release()
    finally:
        store.close()


def run(url: str, replicas: int, *, seconds: float, interval_s: float, ttl_s: float, batch: int) -> Row:
    stop = threading.Event()
    start = threading.Barrier(replicas + 1)
    done = threading.Barrier(replicas)
    lease_ms: list[float] = []
    write_ms: list[float] = []
    leaders: set[str] = set()
    errors: list[str] = []
    threads = [
        threading.Thread(
            target=_replica,
            args=(i, url),
            kwargs={
                "stop": stop,
                "start": start,
                "done": done,
                "interval_s": interval_s,
                "ttl_s": ttl_s,
                "batch": batch,
                "lease_ms": lease_ms,
                "write_ms": write_ms,
                "leaders": leaders,
                "errors": errors,
            },
            daemon=True,
        )
        for i in range(replicas)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - began
    for thread in threads:
        thread.join(timeout=60)
    lease, write = np.array(lease_ms), np.array(write_ms)
    ops = len(lease) + len(write)
    return Row(
        replicas=replicas,
        seconds=round(elapsed, 2),
        ops_per_s=round(ops / elapsed, 1),
        lease_ops=len(lease),
        lease_p50_ms=round(float(np.percentile(lease, 50)), 2) if len(lease) else float("nan"),
        lease_p99_ms=round(float(np.percentile(lease, 99)), 2) if len(lease) else float("nan"),
        write_ops=len(write),
        write_p50_ms=round(float(np.percentile(write, 50)), 2) if len(write) else float("nan"),
        write_p99_ms=round(float(np.percentile(write, 99)), 2) if len(write) else float("nan"),
        samples_per_s=round(len(write) * batch / elapsed, 1),
        leaders_seen=len(leaders),
        errors=len(errors),
    )


@contextlib.contextmanager
def _database(url: str | None, max_connections: int, fsync: bool) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.support.postgres import temporary_postgres  # the same throwaway server the tests start

    with temporary_postgres(max_connections=max_connections, fsync=fsync) as server:
        yield server.create_database()


def _print(rows: list[Row]) -> None:
    print(
        f"{'N':>5} {'ops/s':>9} {'lease p50':>10} {'lease p99':>10} {'write p50':>10} {'write p99':>10} "
        f"{'samples/s':>10} {'leaders':>8} {'errors':>7}"
    )
    for r in rows:
        print(
            f"{r.replicas:>5} {r.ops_per_s:>9.1f} {r.lease_p50_ms:>8.2f}ms {r.lease_p99_ms:>8.2f}ms "
            f"{r.write_p50_ms:>8.2f}ms {r.write_p99_ms:>8.2f}ms {r.samples_per_s:>10.1f} {r.leaders_seen:>8} "
            f"{r.errors:>7}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a PostgreSQL URL (default: start a throwaway local server)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per N")
    parser.add_argument("--interval", type=float, default=0.0, help="sleep between rounds per replica (0: closed loop)")
    parser.add_argument("--ttl", type=float, default=30.0, help="lease TTL in seconds (the daemon's default)")
    parser.add_argument("--batch", type=int, default=10, help="metric samples per write")
    parser.add_argument("--fsync", action="store_true", help="a throwaway server with fsync on (durable commits)")
    parser.add_argument("--json", action="store_true", help="one JSON object per N instead of the table")
    args = parser.parse_args(argv)
    rows = []
    with _database(args.url, max_connections=max(args.replicas) * 2 + 20, fsync=args.fsync) as url:
        open_store(url).close()  # migrate once, before the replicas race to
        for n in args.replicas:
            row = run(url, n, seconds=args.seconds, interval_s=args.interval, ttl_s=args.ttl, batch=args.batch)
            rows.append(row)
            if args.json:
                print(json.dumps(asdict(row)), flush=True)
    if not args.json:
        _print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
