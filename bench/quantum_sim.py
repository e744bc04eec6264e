"""Benchmark: our JAX simulator vs PennyLane default.qubit (JAX, jit+vmap) vs qsimcirq on the QTHA circuit.

Each configuration runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. Prints a table
(or ``--json``) of median wall times after compilation and peak memory, then the speed ratios. Not a test.

    .venv/bin/python bench/quantum_sim.py            # the default set (a few minutes on 2 cores)
    .venv/bin/python bench/quantum_sim.py --full     # also PennyLane fwd+bwd at batch 4096 (needs ~15 GB)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

N_QUBITS = 10


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _inputs(batch: int, n_weights: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, N_QUBITS)).astype("float32"), (0.3 * rng.normal(size=n_weights)).astype("float32")


def _ours(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from quantum import CircuitSpec, make_qnn

    spec = CircuitSpec(n_qubits=N_QUBITS, n_layers=layers)
    qnn = make_qnn(spec)
    x, w = (jnp.asarray(a) for a in _inputs(batch, spec.n_weights))
    if mode == "fwd":
        fn = qnn
    else:
        fn = jax.jit(jax.grad(lambda x, w: (qnn(x, w) ** 2).sum(), argnums=(0, 1)))
    start = time.perf_counter()
    compiled = fn.lower(x, w).compile()
    jax.block_until_ready(fn(x, w))
    compile_s = time.perf_counter() - start
    t = _median_time(lambda: jax.block_until_ready(fn(x, w)), repeats)
    return {"time_s": t, "compile_s": compile_s, "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20}


def _pennylane(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import pennylane as qml  # lazily: an optional bench dependency

    n = N_QUBITS
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="jax")
    def circuit(h, w):
        for i in range(n):
            qml.RY(jnp.pi * jnp.tanh(h[i]), wires=i)
        k = 0
        for _ in range(layers):
            for step in (+1, -1):
                for i in range(n):
                    qml.RY(w[k], wires=i)
                    k += 1
                for i in range(n):
                    qml.CRZ(w[k], wires=[i, (i + step) % n])
                    k += 1
        return [qml.expval(qml.PauliZ(i)) for i in range(n)]

    qnn = jax.vmap(lambda h, w: jnp.stack(circuit(h, w)), in_axes=(0, None))
    x, w = (jnp.asarray(a) for a in _inputs(batch, 4 * n * layers))
    fn = jax.jit(qnn) if mode == "fwd" else jax.jit(jax.grad(lambda x, w: (qnn(x, w) ** 2).sum(), argnums=(0, 1)))
    start = time.perf_counter()
    jax.block_until_ready(fn(x, w))
    compile_s = time.perf_counter() - start
    t = _median_time(lambda: jax.block_until_ready(fn(x, w)), repeats)
    return {"time_s": t, "compile_s": compile_s}


def _qsim(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import numpy as np

    from quantum import CircuitSpec, QsimBackend, build_circuit

    spec = CircuitSpec(n_qubits=N_QUBITS, n_layers=layers)
    qc = build_circuit(spec)
    x, w = _inputs(batch, spec.n_weights)
    values = np.concatenate([np.pi * np.tanh(x), np.broadcast_to(w, (batch, len(w)))], axis=1)
    backend = QsimBackend()
    t = _median_time(lambda: backend.evaluate(qc, values), repeats)
    return {"time_s": t, "compile_s": 0.0}


IMPLS = {"ours": _ours, "pennylane": _pennylane, "qsim": _qsim}


def worker(impl: str, mode: str, batch: int, layers: int, repeats: int) -> None:
    """Run one configuration and print its result as JSON (called in a subprocess)."""
    try:
        result = IMPLS[impl](mode, batch, layers, repeats)
    except ImportError as exc:
        result = {"skipped": f"{exc.name or exc} not installed"}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def configs(full: bool) -> list[tuple[str, str, int, int, int]]:
    """(impl, mode, batch, layers, repeats) in the order they run."""
    out = []
    for batch in (256, 4096):
        out += [("ours", "fwd", batch, 10, 5), ("ours", "fwd+bwd", batch, 10, 3)]
    out += [("ours", "fwd+bwd", 4096, 40, 2)]  # backward memory must not grow with depth
    out += [("pennylane", "fwd", 256, 10, 3), ("pennylane", "fwd+bwd", 256, 10, 2), ("pennylane", "fwd", 4096, 10, 2)]
    if full:
        out += [("pennylane", "fwd+bwd", 4096, 10, 1)]
    out += [("qsim", "fwd", 256, 10, 1)]  # ~tens of ms per circuit: 4096 would take minutes
    return out


def run(config: tuple, timeout: float) -> dict:
    impl, mode, batch, layers, repeats = config
    cmd = [sys.executable, __file__, "--worker", impl, mode, str(batch), str(layers), str(repeats)]
    row = {"impl": impl, "mode": mode, "batch": batch, "layers": layers}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[1])
    except subprocess.TimeoutExpired:
        return row | {"skipped": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return row | {"skipped": f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"}
    return row | json.loads(proc.stdout.strip().splitlines()[-1])


def _find(rows: list[dict], impl: str, mode: str, batch: int, layers: int = 10) -> dict | None:
    for r in rows:
        if (r["impl"], r["mode"], r["batch"], r["layers"]) == (impl, mode, batch, layers) and "time_s" in r:
            return r
    return None


def ratios(rows: list[dict]) -> list[str]:
    """Speed-up and memory lines against the targets."""
    lines = []
    for batch in (256, 4096):
        ours, pl = _find(rows, "ours", "fwd+bwd", batch), _find(rows, "pennylane", "fwd+bwd", batch)
        if ours and pl:
            lines.append(f"fwd+bwd vs PennyLane, batch {batch}: {pl['time_s'] / ours['time_s']:.1f}x (target >= 5x)")
        ours, pl = _find(rows, "ours", "fwd", batch), _find(rows, "pennylane", "fwd", batch)
        if ours and pl:
            lines.append(f"fwd vs PennyLane, batch {batch}: {pl['time_s'] / ours['time_s']:.1f}x")
    ours, qs = _find(rows, "ours", "fwd", 256), _find(rows, "qsim", "fwd", 256)
    if ours and qs:
        lines.append(f"fwd vs qsimcirq sweep, batch 256: {qs['time_s'] / ours['time_s']:.0f}x (target >= 50x)")
    d10, d40 = _find(rows, "ours", "fwd+bwd", 4096, 10), _find(rows, "ours", "fwd+bwd", 4096, 40)
    if d10 and d40:
        lines.append(
            f"fwd+bwd peak memory, batch 4096, 10 vs 40 layers: {d10['peak_rss_mb']:.0f} vs {d40['peak_rss_mb']:.0f} MB "
            f"RSS; XLA temporaries {d10['xla_temp_mb']:.0f} vs {d40['xla_temp_mb']:.0f} MB"
        )
    return lines


def table(rows: list[dict]) -> str:
    head = f"{'impl':<10} {'mode':<8} {'batch':>5} {'layers':>6} {'time ms':>10} {'compile s':>9} {'peak RSS MB':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "time_s" in r:
            lines.append(
                f"{r['impl']:<10} {r['mode']:<8} {r['batch']:>5} {r['layers']:>6} {1e3 * r['time_s']:>10.1f} "
                f"{r['compile_s']:>9.1f} {r['peak_rss_mb']:>11.0f}"
            )
        else:
            lines.append(f"{r['impl']:<10} {r['mode']:<8} {r['batch']:>5} {r['layers']:>6}  skipped: {r['skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--full", action="store_true", help="include PennyLane fwd+bwd at batch 4096")
    parser.add_argument("--impl", action="append", choices=sorted(IMPLS), help="only these implementations")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "MODE", "BATCH", "LAYERS", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, mode, batch, layers, repeats = args.worker
        worker(impl, mode, int(batch), int(layers), int(repeats))
        return
    rows = []
    for config in configs(args.full):
        if args.impl and config[0] not in args.impl:
            continue
        rows.append(run(config, args.timeout))
        if not args.json:
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios(rows)}, indent=2))
    else:
        print(table(rows))
        print("\n".join(ratios(rows)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
