"""Benchmark: our JAX simulator on the QTHA circuit against the machine's float32 GEMM rate and against peers.

Arms (each configuration in its own subprocess, so its peak resident memory is its own; every subprocess is
pinned to the same CPUs with ``sched_setaffinity``):

- ``ours``: ``quantum.make_qnn`` (forward) and ``jax.grad`` of ``sum(<Z>**2)`` for inputs and weights (forward +
  adjoint backward), 10 qubits; 10 and 40 layers for the memory check. It runs the native kernels
  (``SimulatorOptions(kernel="native")``, the default on CPU: fused C, one example's state in cache through
  every stage).
- ``xla``: the same with ``kernel="xla"``: every stage as XLA operations over the whole batch (the kernels
  before the native ones).
- ``gemm``: a float32 ``[B, 2**n] @ [2**n, 2**n]`` matrix product in JAX, B = 4096: the machine's matmul rate
  measured in the same run, the roofline the simulator is compared with.
- ``gemm-block``: the same product at the shape our Kronecker blocks use (``[B * 2 * 2**(n-b), 2**b] @
  [2**b, 2**b]``, b = ``max_block_qubits``): what XLA's matmul reaches with K = 32, the simulator's practical
  limit.
- ``stream``: elementwise passes over a state-sized float32 array (``[B, 2, 2**n]``, B = 4096: each reads and
  writes it once) in one compiled loop, the machine's memory rate measured in the same run. The simulator is
  also judged against the time its passes over the state (``state_passes``) take at this rate.
- ``catalyst``: PennyLane Lightning's adjoint method compiled with Catalyst (``qjit``, per-sample gradients
  ``vmap``-ed), forward + backward. Catalyst pins an older jax, so it runs under its own interpreter
  (``--catalyst-python``, a venv with ``pip install -e '.[bench-catalyst]'``) and with ``OMP_NUM_THREADS=1``
  (Lightning's OpenMP threads oversubscribe two cores: ~25× slower).
- ``qujax``: the same JAX-autodiff statevector method, forward + backward; batch <= 512 (it runs out of memory at
  4096). Checked against ours before it is timed.
- ``aer``: Qiskit Aer, forward only (no gradients), with CRZ decomposed into RZ and CX (Aer gives wrong expectation
  values for bound controlled-rotation parameters); checked against qsimcirq before it is timed.
- ``qsim``: qsimcirq sweep, forward (the reference simulator; Python-bound per circuit).
- ``pennylane``: default.qubit with JAX, forward; its forward + backward only with ``--full`` (it did not finish
  compiling at batch 256 within 400 s).

FLOPs are counted, not measured, for the work our kernels do (``kernel_flops``): every single-qubit layer is a
Kronecker product of blocks of at most ``max_block_qubits`` qubits, each applied as a real ``2^b x 2^b`` matrix
to both planes of the split complex state (``2 * 2 * B * 2^n * 2^b`` FLOPs per block, multiply and add counted
apart); a diagonal stage is a complex phase (6 FLOPs per amplitude); the readout forms probabilities and ``<Z>``
(``B * 2^n * (3 + 2n)``). The adjoint backward does three such passes per stage (uncompute the state, carry the
adjoint, form the matrix gradient), so forward + backward counts 4x the stages plus the readout twice. The gate
count (``gate_flops``: 8 FLOPs per amplitude per real single-qubit gate) is printed beside it: the blocks do
~3x more arithmetic than gate-by-gate application, at far higher throughput.

    .venv/bin/python bench/quantum_sim.py --catalyst-python /path/to/catalyst-venv/bin/python
    .venv/bin/python bench/quantum_sim.py --impl ours --impl gemm        # the roofline lines only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

N_QUBITS = 10
GEMM_BATCH = 4096


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


def _layer_ops(layers: int):
    """The QTHA circuit as (gate, qubits, weight index or None): RY(pi*tanh h_i), then per layer RY, CRZ ring,
    RY, reverse CRZ ring (quantum.build_circuit's order), for the peers that build their own circuits."""
    n, ops, k = N_QUBITS, [], 0
    for _ in range(layers):
        for step in (+1, -1):
            for i in range(n):
                ops.append(("ry", (i,), k))
                k += 1
            for i in range(n):
                ops.append(("crz", (i, (i + step) % n), k))
                k += 1
    return ops


def _pennylane_gates(qml, jnp, h, w, layers: int) -> list:
    """The QTHA circuit's gates inside a PennyLane QNode (default.qubit or Lightning) and its <Z_i> readout."""
    for i in range(N_QUBITS):
        qml.RY(jnp.pi * jnp.tanh(h[i]), wires=i)
    for gate, wires, k in _layer_ops(layers):
        (qml.RY if gate == "ry" else qml.CRZ)(w[k], wires=list(wires))
    return [qml.expval(qml.PauliZ(i)) for i in range(N_QUBITS)]


def kernel_flops(batch: int, layers: int, backward: bool, n_qubits: int = N_QUBITS) -> tuple[float, float]:
    """(kernel FLOPs, gate FLOPs) of our simulator on the QTHA circuit (module docstring says how)."""
    from quantum import SimulatorOptions
    from quantum.kernels import blocks

    amps = batch * 2**n_qubits
    block_sizes = [len(b) for b in blocks(n_qubits, SimulatorOptions().max_block_qubits)]
    # The encoding and the first RY layer form a product state (prepared per qubit, negligible); then per layer
    # a phase, an RY layer, a phase, and (but in the last layer) the next layer's first RY layer.
    ry_layers, phases = 2 * layers - 1, 2 * layers
    per_ry = sum(2 * 2 * amps * 2**b for b in block_sizes)
    stages = ry_layers * per_ry + phases * 6 * amps
    gates = ry_layers * n_qubits * 8 * amps + phases * 6 * amps
    readout = amps * (3 + 2 * n_qubits)
    if backward:
        return 4 * stages + 2 * readout, 4 * gates + 2 * readout
    return stages + readout, gates + readout


def _compiled_time(fn, args: tuple, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """(median seconds per call, seconds of the first call: compilation) of a jitted ``fn(*args)``."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    return _median_time(lambda: jax.block_until_ready(fn(*args)), repeats), compile_s


def state_passes(layers: int, backward: bool, n_qubits: int = N_QUBITS) -> int:
    """Passes over the whole state our kernels make (each reads and writes it): one per Kronecker block and per
    phase; the adjoint backward makes three per forward pass (uncompute, adjoint, matrix gradient)."""
    from quantum import SimulatorOptions
    from quantum.kernels import blocks

    n_blocks = len(blocks(n_qubits, SimulatorOptions().max_block_qubits))
    forward = (2 * layers - 1) * n_blocks + 2 * layers
    return 4 * forward if backward else forward


def _stream(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    passes = 20
    x = jnp.ones((batch, 2, 2**N_QUBITS), jnp.float32)
    # Passes inside one compiled loop, as the simulator's stages run: buffers are reused (a fresh output per call
    # would add first-touch page faults), and loop iterations are not fused into one pass.
    fn = jax.jit(lambda x: jax.lax.fori_loop(0, passes, lambda i, y: y * 1.0001 + 0.5, x))
    t, compile_s = _compiled_time(fn, (x,), repeats)
    t /= passes
    return {"time_s": t, "compile_s": compile_s, "gbps": 2 * x.size * 4 / t / 1e9}


def _ours(mode: str, batch: int, layers: int, repeats: int, kernel: str = "native") -> dict:
    import jax
    import jax.numpy as jnp

    from quantum import CircuitSpec, JaxBackend, SimulatorOptions, make_qnn

    spec = CircuitSpec(n_qubits=N_QUBITS, n_layers=layers)
    qnn = make_qnn(spec, backend=JaxBackend(SimulatorOptions(kernel=kernel)))
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
    flops, gate_flops = kernel_flops(batch, layers, mode != "fwd")
    return {"time_s": t, "compile_s": compile_s, "xla_temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20,
            "gflops": flops / t / 1e9, "gate_gflops": gate_flops / t / 1e9}


def _matmul(rows: int, d: int, repeats: int) -> dict:
    """A float32 ``[rows, d] @ [d, d]`` product in JAX: its time and rate."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(rows, d)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d), jnp.float32)
    t, compile_s = _compiled_time(jax.jit(lambda a, b: a @ b), (a, b), repeats)
    return {"time_s": t, "compile_s": compile_s, "gflops": 2 * rows * d * d / t / 1e9}


def _gemm(mode: str, batch: int, layers: int, repeats: int) -> dict:
    return _matmul(batch, 2**N_QUBITS, repeats)


def _gemm_block(mode: str, batch: int, layers: int, repeats: int) -> dict:
    """The product our Kronecker blocks make: the state's rows ``[B * 2 * 2**(n-b), 2**b] @ [2**b, 2**b]``."""
    from quantum import SimulatorOptions

    d = 2 ** SimulatorOptions().max_block_qubits
    return _matmul(batch * 2 * 2**N_QUBITS // d, d, repeats)


def _catalyst(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax.numpy as jnp
    import pennylane as qml  # lazily: only in the Catalyst interpreter
    from catalyst import grad, qjit, vmap

    n = N_QUBITS
    dev = qml.device("lightning.qubit", wires=n)

    @qml.qnode(dev, diff_method="adjoint")
    def circuit(h, w):
        return _pennylane_gates(qml, jnp, h, w, layers)

    def loss(h, w):
        return jnp.sum(jnp.stack(circuit(h, w)) ** 2)

    @qjit
    def fwd_bwd(x, w):
        gx, gw = vmap(grad(loss, argnums=[0, 1]), in_axes=(0, None))(x, w)
        return gx, jnp.sum(gw, axis=0)

    x, w = _inputs(batch, 4 * n * layers)
    start = time.perf_counter()
    fwd_bwd(x, w)
    compile_s = time.perf_counter() - start
    t = _median_time(lambda: fwd_bwd(x, w), repeats)
    return {"time_s": t, "compile_s": compile_s}


def _qujax(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import qujax

    from quantum import CircuitSpec, make_qnn

    n = N_QUBITS
    ops = _layer_ops(layers)
    gates = ["Ry"] * n + [("Ry" if g == "ry" else "CRz") for g, _, _ in ops]
    qubits = [[i] for i in range(n)] + [list(q) for _, q, _ in ops]
    params = [[i] for i in range(n)] + [[n + k] for _, _, k in ops]
    to_state = qujax.get_params_to_statetensor_func(gates, qubits, params, n)
    signs = jnp.asarray(1.0 - 2.0 * ((np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1), jnp.float32)

    def z(h, w):  # qujax angles are in half-turns (cirq's exponent): RY(theta) = Ry(theta / pi)
        state = to_state(jnp.concatenate([jnp.tanh(h), w / jnp.pi]))
        return (jnp.abs(state.reshape(-1)) ** 2) @ signs

    qnn = jax.vmap(z, in_axes=(0, None))
    x, w = (jnp.asarray(a) for a in _inputs(batch, 4 * n * layers))
    ours = make_qnn(CircuitSpec(n_qubits=n, n_layers=layers))
    error = float(jnp.max(jnp.abs(jax.jit(qnn)(x[:8], w) - ours(x[:8], w))))
    if error > 1e-4:
        raise AssertionError(f"qujax differs from our simulator by {error:.2g}; not timed")
    fn = jax.jit(qnn) if mode == "fwd" else jax.jit(jax.grad(lambda x, w: (qnn(x, w) ** 2).sum(), argnums=(0, 1)))
    start = time.perf_counter()
    jax.block_until_ready(fn(x, w))
    compile_s = time.perf_counter() - start
    t = _median_time(lambda: jax.block_until_ready(fn(x, w)), repeats)
    return {"time_s": t, "compile_s": compile_s, "max_error": error}


def _aer(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import numpy as np
    from qiskit import QuantumCircuit, transpile
    from qiskit.circuit import ParameterVector
    from qiskit_aer import AerSimulator

    from quantum import CircuitSpec, QsimBackend, build_circuit

    n = N_QUBITS
    ops = _layer_ops(layers)
    h, w = ParameterVector("h", n), ParameterVector("w", 4 * n * layers)
    qc = QuantumCircuit(n)
    for i in range(n):
        qc.ry(h[i], i)
    for gate, wires, k in ops:
        if gate == "ry":
            qc.ry(w[k], wires[0])
        else:  # CRZ(t) = RZ(t/2) on the target, CX, RZ(-t/2), CX: Aer mis-binds controlled rotations
            control, target = wires
            qc.rz(w[k] / 2, target)
            qc.cx(control, target)
            qc.rz(-w[k] / 2, target)
            qc.cx(control, target)
    qc.save_probabilities()
    sim = AerSimulator(method="statevector", max_parallel_threads=len(os.sched_getaffinity(0)))
    compiled = transpile(qc, sim)
    # Aer's probabilities are little-endian (bit i = qubit i); <Z_i> = sum_s p(s) (1 - 2 bit_i(s)).
    signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)

    def evaluate(x, weights):
        binds = {p: np.pi * np.tanh(x[:, i]) for i, p in enumerate(h)}
        binds |= {p: np.full(len(x), weights[k]) for k, p in enumerate(w)}
        result = sim.run(compiled, parameter_binds=[binds]).result()
        return np.stack([result.data(i)["probabilities"] for i in range(len(x))]) @ signs

    x, weights = _inputs(batch, 4 * n * layers)
    spec = CircuitSpec(n_qubits=n, n_layers=layers)
    values = np.concatenate([np.pi * np.tanh(x[:8]), np.broadcast_to(weights, (8, len(weights)))], axis=1)
    error = float(np.max(np.abs(evaluate(x[:8], weights) - QsimBackend().evaluate(build_circuit(spec), values))))
    if error > 1e-4:
        raise AssertionError(f"Aer differs from qsim by {error:.2g}; not timed")
    start = time.perf_counter()
    evaluate(x, weights)
    compile_s = time.perf_counter() - start
    t = _median_time(lambda: evaluate(x, weights), repeats)
    return {"time_s": t, "compile_s": compile_s, "max_error": error}


def _pennylane(mode: str, batch: int, layers: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import pennylane as qml  # lazily: an optional bench dependency

    n = N_QUBITS
    dev = qml.device("default.qubit", wires=n)

    @qml.qnode(dev, interface="jax")
    def circuit(h, w):
        return _pennylane_gates(qml, jnp, h, w, layers)

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


def _xla(mode: str, batch: int, layers: int, repeats: int) -> dict:
    return _ours(mode, batch, layers, repeats, kernel="xla")


IMPLS = {"ours": _ours, "xla": _xla, "gemm": _gemm, "gemm-block": _gemm_block, "stream": _stream, "catalyst": _catalyst,
         "qujax": _qujax, "aer": _aer, "pennylane": _pennylane, "qsim": _qsim}


def worker(impl: str, mode: str, batch: int, layers: int, repeats: int, cpus: list[int]) -> None:
    """Run one configuration pinned to ``cpus`` and print its result as JSON (called in a subprocess)."""
    os.sched_setaffinity(0, cpus)
    try:
        result = IMPLS[impl](mode, batch, layers, repeats)
    except ImportError as exc:
        result = {"skipped": f"{exc.name or exc} not installed"}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def configs(full: bool) -> list[tuple[str, str, int, int, int]]:
    """(impl, mode, batch, layers, repeats) in the order they run."""
    out = [("gemm", "gemm", GEMM_BATCH, 0, 5), ("gemm-block", "gemm", GEMM_BATCH, 0, 5),
           ("stream", "stream", GEMM_BATCH, 0, 5)]
    for batch in (256, 4096):
        out += [("ours", "fwd", batch, 10, 5), ("ours", "fwd+bwd", batch, 10, 3)]
    out += [("ours", "fwd+bwd", 4096, 40, 2)]  # backward memory must not grow with depth
    out += [("xla", "fwd", 4096, 10, 3), ("xla", "fwd+bwd", 4096, 10, 2)]
    out += [("gemm", "gemm", GEMM_BATCH, 0, 5), ("stream", "stream", GEMM_BATCH, 0, 5)]  # again: the load may change
    out += [("catalyst", "fwd+bwd", 256, 10, 2), ("catalyst", "fwd+bwd", 4096, 10, 1)]
    out += [("qujax", "fwd", 512, 10, 3), ("qujax", "fwd+bwd", 512, 10, 3), ("ours", "fwd+bwd", 512, 10, 3)]
    out += [("aer", "fwd", 256, 10, 2), ("qsim", "fwd", 256, 10, 1), ("pennylane", "fwd", 256, 10, 2)]
    if full:
        out += [("pennylane", "fwd+bwd", 256, 10, 1)]
    return out


def run(config: tuple, timeout: float, cpus: list[int], catalyst_python: str | None) -> dict:
    impl, mode, batch, layers, repeats = config
    row = {"impl": impl, "mode": mode, "batch": batch, "layers": layers}
    python, env = sys.executable, dict(os.environ)
    if impl == "catalyst":
        if catalyst_python is None:
            return row | {"skipped": "pass --catalyst-python (a venv with the bench-catalyst extra)"}
        python, env["OMP_NUM_THREADS"] = catalyst_python, "1"
    cmd = [python, __file__, "--worker", impl, mode, str(batch), str(layers), str(repeats),
           "--cpus", ",".join(map(str, cpus))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[1],
                              env=env)
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
    """Roofline, speed-up and memory lines against the targets."""
    lines = []
    blocks = [r["gflops"] for r in rows if r["impl"] == "gemm-block" and "gflops" in r]
    if blocks:
        lines.append(f"float32 GEMM of one Kronecker block's shape (K = N = 2**max_block_qubits): "
                     f"{max(blocks):.1f} GFLOP/s, the rate the XLA kernels' block products can reach")
    gemms = [r["gflops"] for r in rows if r["impl"] == "gemm" and "gflops" in r]
    if gemms:
        gemm = max(gemms)
        lines.append(f"float32 GEMM [{GEMM_BATCH}x{2**N_QUBITS}]@[{2**N_QUBITS}x{2**N_QUBITS}]: "
                     f"{' / '.join(f'{g:.1f}' for g in gemms)} GFLOP/s (before / after ours; the best is the roofline)")
        for mode, target in (("fwd", 0.40), ("fwd+bwd", 0.30)):
            ours = _find(rows, "ours", mode, 4096)
            if ours:
                lines.append(f"ours {mode} at 4096: {ours['gflops']:.1f} GFLOP/s = {ours['gflops'] / gemm:.0%} of GEMM "
                             f"(target >= {target:.0%}); gate-count rate {ours['gate_gflops']:.1f} GFLOP/s")
    streams = [r["gbps"] for r in rows if r["impl"] == "stream" and "gbps" in r]
    if streams:
        rate = max(streams)
        state_mb = GEMM_BATCH * 2 * 2**N_QUBITS * 4 / 1e6
        lines.append(f"memory stream over a {state_mb:.0f} MB state: {' / '.join(f'{g:.1f}' for g in streams)} GB/s "
                     "(read + write; the best is the memory roofline)")
        for mode in ("fwd", "fwd+bwd"):
            ours = _find(rows, "ours", mode, 4096)
            if ours:
                passes = state_passes(ours["layers"], mode != "fwd")
                floor = passes * 2 * state_mb / 1e3 / rate
                lines.append(f"ours {mode} at 4096: {passes} state passes take {1e3 * floor:.0f} ms at the stream rate; "
                             f"ours {1e3 * ours['time_s']:.0f} ms = {floor / ours['time_s']:.0%} of the memory roofline")
    for mode in ("fwd", "fwd+bwd"):
        ours, xla = _find(rows, "ours", mode, 4096), _find(rows, "xla", mode, 4096)
        if ours and xla:
            lines.append(f"{mode} at 4096, native kernels vs XLA's: {xla['time_s'] / ours['time_s']:.1f}x faster")
    for impl, batch, target in (("catalyst", 4096, " (target >= 20x)"), ("catalyst", 256, ""), ("qujax", 512, "")):
        ours, peer = _find(rows, "ours", "fwd+bwd", batch), _find(rows, impl, "fwd+bwd", batch)
        if ours and peer:
            lines.append(f"fwd+bwd vs {impl}, batch {batch}: {peer['time_s'] / ours['time_s']:.1f}x faster{target}")
    for impl, batch in (("qujax", 512), ("aer", 256), ("qsim", 256), ("pennylane", 256)):
        ours, peer = _find(rows, "ours", "fwd", batch) or _find(rows, "ours", "fwd", 256), _find(rows, impl, "fwd", batch)
        if ours and peer:
            scale = batch / ours["batch"]  # ours at 256 scaled when the peer ran another batch
            lines.append(f"fwd vs {impl}, batch {batch}: {peer['time_s'] / (scale * ours['time_s']):.1f}x faster")
    d10, d40 = _find(rows, "ours", "fwd+bwd", 4096, 10), _find(rows, "ours", "fwd+bwd", 4096, 40)
    if d10 and d40:
        lines.append(
            f"fwd+bwd peak memory, batch 4096, 10 vs 40 layers: {d10['peak_rss_mb']:.0f} vs {d40['peak_rss_mb']:.0f} MB "
            f"RSS; XLA temporaries {d10['xla_temp_mb']:.0f} vs {d40['xla_temp_mb']:.0f} MB"
        )
    return lines


def table(rows: list[dict]) -> str:
    head = (f"{'impl':<10} {'mode':<8} {'batch':>5} {'layers':>6} {'time ms':>10} {'GFLOP/s':>8} {'compile s':>9} "
            f"{'peak RSS MB':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "time_s" in r:
            rate = f"{r['gflops']:.1f}" if "gflops" in r else (f"{r['gbps']:.1f}GB/s" if "gbps" in r else "")
            lines.append(
                f"{r['impl']:<10} {r['mode']:<8} {r['batch']:>5} {r['layers']:>6} {1e3 * r['time_s']:>10.1f} {rate:>8} "
                f"{r['compile_s']:>9.1f} {r['peak_rss_mb']:>11.0f}"
            )
        else:
            lines.append(f"{r['impl']:<10} {r['mode']:<8} {r['batch']:>5} {r['layers']:>6}  skipped: {r['skipped']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--full", action="store_true", help="include PennyLane default.qubit fwd+bwd at batch 256")
    parser.add_argument("--impl", action="append", choices=sorted(IMPLS), help="only these implementations")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--cpus", default=None, help="CPUs every arm is pinned to, e.g. 0,1 (default: all of ours)")
    parser.add_argument("--catalyst-python", default=None, help="interpreter of a venv with the bench-catalyst extra")
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "MODE", "BATCH", "LAYERS", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0)) if args.cpus is None else [int(c) for c in args.cpus.split(",")]
    if args.worker:
        impl, mode, batch, layers, repeats = args.worker
        worker(impl, mode, int(batch), int(layers), int(repeats), cpus)
        return
    rows = []
    load = os.getloadavg()
    for config in configs(args.full):
        if args.impl and config[0] not in args.impl:
            continue
        rows.append(run(config, args.timeout, cpus, args.catalyst_python))
        if not args.json:
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    load_line = (f"CPUs {','.join(map(str, cpus))}; load average at start {load[0]:.1f}, "
                 f"at end {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios(rows), "load": load_line}, indent=2))
    else:
        print(load_line)
        print(table(rows))
        print("\n".join(ratios(rows)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
