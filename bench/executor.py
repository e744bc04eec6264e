"""Executor throughput against the emulated QPU cloud: programs per second at several in-flight bounds.

Latency is emulated in real time (queue and network overhead overlap between jobs; the device runs one job at a
time), so the figure shows how much concurrency hides per-job overhead. Prints a table; ``--json`` for machines.

    .venv/bin/python bench/executor.py                     # 1 and 8 in flight
    .venv/bin/python bench/executor.py --in-flight 1 2 4 8 16 --failure-rate 0.3 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cirq  # noqa: E402
import sympy  # noqa: E402

from quantum.emulator import (  # noqa: E402
    Calibration,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
)
from quantum.executor import Executor, ExecutorConfig  # noqa: E402
from quantum.qpu import Program, RealDeviceClock  # noqa: E402


@dataclass(frozen=True)
class Row:
    in_flight: int
    programs: int
    batch_size: int
    jobs: int
    retries: int
    wall_s: float
    programs_per_s: float
    shots: int
    cost: float


def _programs(n: int, shots: int) -> list[Program]:
    q = cirq.LineQubit.range(2)
    t = sympy.Symbol("t")
    circuit = cirq.Circuit(cirq.ry(t).on(q[0]), cirq.CNOT(*q), cirq.measure(*q, key="m"))
    return [Program(circuit, {"t": 0.01 * i}, shots) for i in range(n)]


def run(in_flight: int, args: argparse.Namespace) -> Row:
    device = DeviceSpec(name="bench-3x3", rows=3, cols=3)
    latency = LatencyModel(
        queue_s=args.queue_s,
        queue_jitter_s=args.queue_s / 4,
        per_program_s=args.per_program_s,
        per_shot_s=1e-6,
    )
    failures = (
        FailureModel.transient(args.failure_rate, offline_s=0.5) if args.failure_rate else FailureModel()
    )
    clock = RealDeviceClock()
    emulator = DeviceEmulator(
        EmulatorConfig(device=device, latency=latency, failures=failures, seed=args.seed),
        calibration=Calibration.synthetic(device, seed=args.seed),
        clock=clock,
    )
    config = ExecutorConfig(
        max_in_flight=in_flight,
        batch_size=args.batch_size,
        poll_initial_s=0.02,
        poll_max_s=0.1,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        seed=args.seed,
    )
    executor = Executor(emulator, config, clock=clock)
    programs = _programs(args.programs, args.shots)
    emulator.compile(programs[0].circuit)  # compile once outside the timing, as a warm cache would
    start = time.perf_counter()
    executor.run(programs)
    wall = time.perf_counter() - start
    stats = executor.stats()
    return Row(
        in_flight,
        len(programs),
        args.batch_size,
        stats.jobs_completed,
        stats.retries,
        round(wall, 3),
        round(len(programs) / wall, 1),
        stats.shots,
        round(stats.cost, 4),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--shots", type=int, default=200)
    parser.add_argument(
        "--queue-s", type=float, default=1.0, help="emulated per-job queue and network overhead"
    )
    parser.add_argument("--per-program-s", type=float, default=0.002, help="emulated device time per program")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = [run(n, args) for n in args.in_flight]
    if args.json:
        print(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rows]}, indent=1))
        return 0
    print(
        f"executor vs emulated cloud: {args.programs} programs x {args.shots} shots, batches of "
        f"{args.batch_size}, queue {args.queue_s}s, failure rate {args.failure_rate}"
    )
    header = f"{'in flight':>9} {'jobs':>5} {'retries':>7} {'wall s':>8} {'programs/s':>11} {'cost':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.in_flight:>9} {r.jobs:>5} {r.retries:>7} {r.wall_s:>8.2f} {r.programs_per_s:>11.1f} {r.cost:>8.2f}"
        )
    if len(rows) > 1:
        print(
            f"speed-up {rows[-1].in_flight} vs {rows[0].in_flight} in flight: "
            f"{rows[-1].programs_per_s / rows[0].programs_per_s:.1f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
