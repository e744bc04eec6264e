"""Compile a symbolic cirq circuit into a pure, differentiable JAX statevector simulator.

The compiled function maps ``(inputs[B, k], weights[P]) -> float[B, m]`` (``<Z_i>`` or basis probabilities).
It is jit-able and vmap-able. The backward pass is the adjoint method (``jax.custom_vjp``): the forward keeps only
the final state; the backward walks the stages in reverse, recomputing each earlier state by applying the stage's
inverse, so memory does not grow with circuit depth.

Example:
    >>> from quantum import CircuitSpec, build_circuit
    >>> qc = build_circuit(CircuitSpec(n_qubits=3, n_layers=1))
    >>> f = compile_circuit(qc)
    >>> f(jnp.zeros((2, 3)), jnp.zeros(12)).shape
    (2, 3)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from quantum.circuits import QnnCircuit
from quantum.errors import CircuitTooLargeError, NativeKernelError, QuantumSpecError
from quantum.fusion import LocalStage, fuse, repeats, signature
from quantum.kernels import local_prepare, stage_kernels
from quantum.lowering import lower_circuit
from quantum.native import KIND_COMPLEX, KIND_PHASE, NativeLibrary, Program

QnnFunction = Callable[[jax.Array, jax.Array], jax.Array]
# The name of the final state the backward pass starts from (``jax.ad_checkpoint.checkpoint_name``): a caller's
# rematerialisation policy that saves it (``save_only_these_names(FINAL_STATE_NAME)``) keeps one state per circuit
# call instead of re-running the whole circuit before its backward pass.
FINAL_STATE_NAME = "quantum_final_state"
# Live state-sized buffers at the peak of the backward pass (state, adjoint, two temporaries).
_LIVE_STATES = 4


@dataclass(frozen=True)
class SimulatorOptions:
    """Options of the JAX statevector simulator.

    Attributes:
        dtype: amplitude precision; ``"complex64"`` (float32 outputs) or ``"complex128"`` (needs
            ``jax_enable_x64``).
        max_block_qubits: single-qubit layers are applied as Kronecker blocks of at most this many qubits
            (2**5 = 32-wide matrices suit CPU matmuls).
        memory_limit_bytes: refuse batch sizes whose working set exceeds this; None means physical memory.
        chunk_size: examples simulated together; larger batches run chunk by chunk (``lax.map``) so the states
            stay in cache through all stages. None: as many as fit in ``cache_bytes``.
        cache_bytes: the cache budget for the automatic chunk size.
        kernel: ``"xla"`` runs every stage as XLA operations; ``"native"`` runs the whole circuit (after its
            first, product-state stage) in fused C kernels built on first use (``quantum/native``: one example's
            state stays in cache through every stage), called from JAX as a callback; it needs a C compiler,
            complex64 and no dense multi-qubit gates. ``"auto"`` (the default): native where it can run and JAX's
            default device is the CPU, else XLA.
    """

    dtype: Literal["complex64", "complex128"] = "complex64"
    max_block_qubits: int = 5
    memory_limit_bytes: int | None = None
    chunk_size: int | None = None
    cache_bytes: int = 2**19
    kernel: Literal["xla", "native", "auto"] = "auto"

    def __post_init__(self) -> None:
        if self.dtype not in ("complex64", "complex128"):
            raise QuantumSpecError(f"dtype={self.dtype!r}: choose 'complex64' or 'complex128'")
        if self.kernel not in ("xla", "native", "auto"):
            raise QuantumSpecError(f"kernel={self.kernel!r}: choose 'xla', 'native' or 'auto'")
        if self.max_block_qubits < 1:
            raise QuantumSpecError(f"max_block_qubits={self.max_block_qubits}: pass an int >= 1")


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_memory(n_qubits: int, batch: int, itemsize: int, limit: int | None) -> None:
    need = _LIVE_STATES * batch * (2**n_qubits) * itemsize
    limit = _physical_memory() if limit is None else limit
    if need > limit:
        raise CircuitTooLargeError(
            f"simulating {n_qubits} qubits at batch {batch} needs about {need / 2**30:.3g} GiB "
            f"(limit {limit / 2**30:.3g} GiB); use fewer qubits, a smaller batch, or the qsim backend"
        )


@dataclass(frozen=True)
class _Plan:
    """Compile-time data: stage kernels and the affine maps from symbols to stage parameters."""

    kernels: tuple
    batched: tuple[bool, ...]  # stage parameters depend on inputs
    bounds: tuple[tuple[int, int], ...]  # slice of the stage's params in t_batched or t_shared
    prepare: Callable | None  # first stage applied to |0...0> as a product state
    chunk: int  # examples simulated together (a cache-sized block of the batch)
    runs: tuple[tuple[int, int, int], ...]  # (start, period, reps): repeated stages run as one lax.scan
    in_map: np.ndarray  # [Gb, k]: t_batched = inputs @ in_map.T + weights @ wb_map.T + b_const
    wb_map: np.ndarray
    b_const: np.ndarray
    ws_map: np.ndarray  # [Gs, P]: t_shared = weights @ ws_map.T + s_const
    s_const: np.ndarray


def _plan(qc: QnnCircuit, options: SimulatorOptions) -> _Plan:
    n, k = len(qc.qubits), len(qc.input_symbols)
    lowered = lower_circuit(qc.circuit, qc.qubits, qc.symbols)
    stages = fuse(lowered)
    dtype = jnp.dtype(options.dtype)
    rows: dict[bool, list] = {True: [], False: []}
    batched, bounds, kernels = [], [], []
    for stage in stages:
        params = [op.param for op in stage.all_ops if op.param is not None]
        is_batched = any(i < k for p in params for i, _ in p.terms)
        start = len(rows[is_batched])
        rows[is_batched].extend(params)
        batched.append(is_batched)
        bounds.append((start, len(rows[is_batched])))
        kernels.append(stage_kernels(stage, n, dtype, options.max_block_qubits))
    dense = {}
    for key, params in rows.items():
        m = np.zeros((len(params), len(qc.symbols)))
        for r, p in enumerate(params):
            for i, c in p.terms:
                m[r, i] += c
        dense[key] = (m, np.array([p.const for p in params]))
    prepare = local_prepare(stages[0], n, dtype) if stages and isinstance(stages[0], LocalStage) else None
    eligible = [not b and not (i == 0 and prepare is not None) for i, b in enumerate(batched)]
    runs = repeats([signature(s) for s in stages], eligible)
    (mb, cb), (ms, cs) = dense[True], dense[False]
    chunk = options.chunk_size or max(8, options.cache_bytes // (2**n * dtype.itemsize))
    return _Plan(
        tuple(kernels), tuple(batched), tuple(bounds), prepare, chunk, tuple(runs), mb[:, :k], mb[:, k:], cb, ms[:, k:], cs
    )


def _readout(qc: QnnCircuit, real) -> Callable:
    n = len(qc.qubits)
    signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1)

    def readout(psi):
        probs = psi[:, 0] ** 2 + psi[:, 1] ** 2
        return probs @ jnp.asarray(signs, real) if qc.readout == "z" else probs

    return readout


def _stage_params(plan: _Plan, i: int, t_b, t_s):
    lo, hi = plan.bounds[i]
    return t_b[:, lo:hi] if plan.batched[i] else t_s[lo:hi]


def _run_params(plan: _Plan, start: int, period: int, reps: int, t_s):
    """The shared parameters of a repeated run, one row per repetition, and each stage's slice of a row."""
    lo, hi = plan.bounds[start][0], plan.bounds[start + period * reps - 1][1]
    cuts = [(plan.bounds[start + j][0] - lo, plan.bounds[start + j][1] - lo) for j in range(period)]
    return t_s[lo:hi].reshape(reps, -1), cuts


def _initial_state(plan: _Plan, n: int, real, t_b, t_s):
    batch = t_b.shape[0]
    if plan.prepare is not None:
        return plan.prepare(_stage_params(plan, 0, t_b, t_s), batch)
    return jnp.zeros((batch, 2, 2**n), real).at[:, 0, 0].set(1)


def _make_core(plan: _Plan, qc: QnnCircuit, dtype) -> Callable:
    n = len(qc.qubits)
    real = jnp.finfo(dtype).dtype
    readout = _readout(qc, real)

    def forward(t_b, t_s):
        psi = _initial_state(plan, n, real, t_b, t_s)
        for start, period, reps in plan.runs:
            if start == 0 and plan.prepare is not None:
                continue
            if reps == 1:
                psi = plan.kernels[start].apply(_stage_params(plan, start, t_b, t_s), psi)
                continue
            rows, cuts = _run_params(plan, start, period, reps, t_s)

            def body(psi, row, start=start, cuts=cuts):
                for j, (a, b) in enumerate(cuts):
                    psi = plan.kernels[start + j].apply(row[a:b], psi)
                return psi, None

            psi, _ = jax.lax.scan(body, psi, rows)
        return psi

    def step_back(kern, t, psi, lam):
        """One stage of the adjoint pass: the state before the stage, the adjoint before it, and dL/dt."""
        ms, mats_vjp = jax.vjp(kern.mats, t)
        dms = [None] * kern.n_factors
        for i in reversed(range(kern.n_factors)):
            psi = kern.factor(i, ms[i], psi, True)  # uncompute: the state before this factor
            # The matrix gradient from that state and the adjoint after the factor: one contraction over the
            # batch, without re-running the factor (jax.vjp of the whole stage would recompute it).
            (dms[i],) = jax.vjp(lambda m, i=i, psi=psi: kern.factor(i, m, psi, False), ms[i])[1](lam)
            lam = kern.factor(i, ms[i], lam, True)
        (grad,) = mats_vjp(tuple(dms))
        # Nothing else orders these: XLA may run the uncompute chain ahead, or defer a stage's gradient
        # reduction to the end, keeping state-sized buffers per stage alive (what the adjoint method avoids).
        return jax.lax.optimization_barrier((psi, lam, grad))

    def backward(t_b, t_s, psi, g):
        (lam,) = jax.vjp(readout, psi)[1](g)
        grads: dict[int, jax.Array] = {}  # by run start, flattened in parameter order
        for start, period, reps in reversed(plan.runs):
            if start == 0 and plan.prepare is not None:
                batch = t_b.shape[0]
                prep = lambda t_, batch=batch: plan.prepare(t_, batch)  # noqa: E731
                (grads[0],) = jax.vjp(prep, _stage_params(plan, 0, t_b, t_s))[1](lam)
            elif reps == 1:
                psi, lam, grads[start] = step_back(plan.kernels[start], _stage_params(plan, start, t_b, t_s), psi, lam)
            else:
                rows, cuts = _run_params(plan, start, period, reps, t_s)

                def body(carry, row, start=start, cuts=cuts):
                    psi, lam = carry
                    parts = [None] * len(cuts)
                    for j in range(len(cuts) - 1, -1, -1):
                        a, b = cuts[j]
                        psi, lam, parts[j] = step_back(plan.kernels[start + j], row[a:b], psi, lam)
                    return (psi, lam), jnp.concatenate(parts)

                (psi, lam), g_rows = jax.lax.scan(body, (psi, lam), rows, reverse=True)
                grads[start] = g_rows.reshape(-1)
        g_b = [grads[s] for s, _, _ in plan.runs if plan.batched[s]]
        g_s = [grads[s] for s, _, _ in plan.runs if not plan.batched[s]]
        g_b = jnp.concatenate(g_b, axis=1) if g_b else jnp.zeros_like(t_b)
        g_s = jnp.concatenate(g_s) if g_s else jnp.zeros_like(t_s)
        return g_b.astype(t_b.dtype), g_s.astype(t_s.dtype)

    def chunks(x, size):
        """``[B, ...] -> [ceil(B/size), size, ...]``, zero-padded (padded rows get zero cotangents)."""
        count = -(-x.shape[0] // size)
        x = jnp.pad(x, [(0, count * size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((count, size) + x.shape[1:])

    def core_fwd(t_b, t_s):
        batch = t_b.shape[0]
        if batch <= plan.chunk:
            psi = forward(t_b, t_s)
            return readout(psi), (t_b, t_s, checkpoint_name(psi, FINAL_STATE_NAME))
        # Chunks small enough to stay in cache through all stages, instead of streaming the batch per stage.
        psi = jax.lax.map(lambda tb: forward(tb, t_s), chunks(t_b, plan.chunk))
        out = readout(psi.reshape((-1,) + psi.shape[2:]))[:batch]
        return out, (t_b, t_s, checkpoint_name(psi, FINAL_STATE_NAME))

    def core_bwd(res, g):
        t_b, t_s, psi = res
        if psi.ndim == 3:
            return backward(t_b, t_s, psi, g)
        parts = (chunks(t_b, plan.chunk), psi, chunks(g, plan.chunk))
        g_b, g_s = jax.lax.map(lambda a: backward(a[0], t_s, a[1], a[2]), parts)
        return g_b.reshape(-1, t_b.shape[1])[: t_b.shape[0]], g_s.sum(axis=0)

    @jax.custom_vjp
    def core(t_b, t_s):
        return core_fwd(t_b, t_s)[0]

    core.defvjp(core_fwd, core_bwd)
    return core


def _native_program(plan: _Plan) -> Program | None:
    """The circuit after its product-state stage as native factors; None if a stage has no native layout."""
    first = 1 if plan.prepare is not None else 0
    layouts, batched = [], []
    for i in range(first, len(plan.kernels)):
        if plan.kernels[i].layouts is None:
            return None
        layouts += plan.kernels[i].layouts
        batched += [plan.batched[i]] * len(plan.kernels[i].layouts)
    return Program.of(layouts, batched)


def _pack(m: jax.Array, kind: int, batched: bool) -> jax.Array:
    """A factor's matrix (complex ``[..., d, d]``) or phase table (``[2, ..., 2**n]``) as its native floats."""
    lead = 1 if batched else 0
    if kind == KIND_PHASE:
        m = jnp.moveaxis(m, 0, -2)
    elif kind == KIND_COMPLEX:
        m = jnp.stack([m.real, m.imag], axis=-3)
    else:
        m = m.real
    return m.reshape(m.shape[:lead] + (-1,)).astype(jnp.float32)


def _make_native_core(plan: _Plan, qc: QnnCircuit, dtype, library: NativeLibrary, program: Program) -> Callable:
    """``core(t_b, t_s)`` with the stages after the product-state one run by the native kernels (a callback).

    JAX builds every factor's matrix or phase table from the parameters (``pack``); the kernels run the states.
    The backward pass gets the data's cotangent from the kernels and maps it to the parameters through
    ``pack``'s own VJP.
    """
    n = len(qc.qubits)
    real = jnp.finfo(dtype).dtype
    readout = _readout(qc, real)
    factors = library.factors(program)

    def stage_floats(i, t):
        kern = plan.kernels[i]
        return [_pack(m, lay.kind, plan.batched[i]) for lay, m in zip(kern.layouts, kern.mats(t), strict=True)]

    def pack(t_b, t_s):
        """Every factor's data as the kernels read it: the shared floats and one row of floats per example."""
        shared, rows = [], []
        for start, period, reps in plan.runs:
            if start == 0 and plan.prepare is not None:
                continue
            if reps == 1:
                (rows if plan.batched[start] else shared).extend(
                    stage_floats(start, _stage_params(plan, start, t_b, t_s)))
                continue
            run_rows, cuts = _run_params(plan, start, period, reps, t_s)

            def one(row, start=start, cuts=cuts):
                return jnp.concatenate([f for j, (a, b) in enumerate(cuts) for f in stage_floats(start + j, row[a:b])])

            # One vmapped computation per repeated run, so the program does not grow with depth.
            shared.append(jax.vmap(one)(run_rows).reshape(-1))
        shared = jnp.concatenate(shared) if shared else jnp.zeros((0,), jnp.float32)
        rows = jnp.concatenate(rows, axis=1) if rows else jnp.zeros((t_b.shape[0], 0), jnp.float32)
        return shared, rows

    def run_forward(psi, shared, rows):
        return library.forward(program, factors, n, psi, shared, rows)

    def run_backward(psi, lam, shared, rows):
        return library.backward(program, factors, n, psi, lam, shared, rows)

    def core_fwd(t_b, t_s):
        psi0 = _initial_state(plan, n, real, t_b, t_s).astype(jnp.float32)
        shared, rows = pack(t_b, t_s)
        psi = jax.pure_callback(run_forward, jax.ShapeDtypeStruct(psi0.shape, jnp.float32), psi0, shared, rows,
                                vmap_method="sequential")
        return readout(psi), (t_b, t_s, checkpoint_name(psi, FINAL_STATE_NAME))

    def core_bwd(res, g):
        t_b, t_s, psi = res
        (lam,) = jax.vjp(readout, psi)[1](g)
        (shared, rows), pack_vjp = jax.vjp(pack, t_b, t_s)
        state = jax.ShapeDtypeStruct(psi.shape, jnp.float32)
        out = (state, state, jax.ShapeDtypeStruct(shared.shape, jnp.float32),
               jax.ShapeDtypeStruct(rows.shape, jnp.float32))
        _, lam0, d_shared, d_rows = jax.pure_callback(run_backward, out, psi, lam, shared, rows,
                                                      vmap_method="sequential")
        g_b, g_s = pack_vjp((d_shared, d_rows))
        (p_b, p_s) = jax.vjp(lambda b, s: _initial_state(plan, n, real, b, s), t_b, t_s)[1](lam0.astype(real))
        return (g_b + p_b).astype(t_b.dtype), (g_s + p_s).astype(t_s.dtype)

    @jax.custom_vjp
    def core(t_b, t_s):
        return core_fwd(t_b, t_s)[0]

    core.defvjp(core_fwd, core_bwd)
    return core


def _core(plan: _Plan, qc: QnnCircuit, options: SimulatorOptions) -> Callable:
    """The XLA core, or the native one where ``options.kernel`` asks for it and it can run."""
    dtype = jnp.dtype(options.dtype)
    # On an accelerator the callback would copy states to the host and back: XLA's kernels stay there.
    if options.kernel == "xla" or (options.kernel == "auto" and jax.default_backend() != "cpu"):
        return _make_core(plan, qc, dtype)
    program = _native_program(plan)
    if options.dtype != "complex64":
        reason = f"dtype={options.dtype!r} (the native kernels are complex64)"
    elif program is None:
        reason = "the circuit has a dense multi-qubit gate (CNOT, SWAP, ...), which the native kernels do not run"
    else:
        try:
            return _make_native_core(plan, qc, dtype, NativeLibrary.load(), program)
        except NativeKernelError:
            if options.kernel == "native":
                raise
            return _make_core(plan, qc, dtype)
    if options.kernel == "native":
        raise QuantumSpecError(f"kernel='native' cannot run this circuit: {reason}; use kernel='xla' or 'auto'")
    return _make_core(plan, qc, dtype)


def compile_circuit(qc: QnnCircuit, options: SimulatorOptions | None = None) -> QnnFunction:
    """Compile ``qc`` into ``f(inputs[B, k], weights[P]) -> float[B, m]``.

    ``inputs`` and ``weights`` are the values of ``qc.input_symbols`` and ``qc.weight_symbols`` as given (no
    feature map; ``make_qnn`` applies that). The function is pure: wrap it in ``jax.jit`` to compile.

    Args:
        qc: the circuit record.
        options: simulator options (precision, block size, memory limit).

    Returns:
        The simulator function; outputs are float32 for complex64, float64 for complex128.

    Raises:
        UnsupportedGateError, UnresolvedSymbolError, NonlinearParameterError: from lowering the circuit.
        CircuitTooLargeError: when called with a batch whose state vectors would not fit in memory.
    """
    options = options or SimulatorOptions()
    dtype = jnp.dtype(options.dtype)
    real = jnp.finfo(dtype).dtype
    plan = _plan(qc, options)
    core = _core(plan, qc, options)
    k, p = len(qc.input_symbols), len(qc.weight_symbols)

    def simulate(inputs: jax.Array, weights: jax.Array) -> jax.Array:
        inputs, weights = jnp.asarray(inputs, real), jnp.asarray(weights, real)
        if inputs.ndim != 2 or inputs.shape[1] != k or weights.shape != (p,):
            raise QuantumSpecError(
                f"got inputs {inputs.shape} and weights {weights.shape}; expected inputs [B, {k}] and weights [{p}]"
            )
        _check_memory(len(qc.qubits), inputs.shape[0], dtype.itemsize, options.memory_limit_bytes)
        t_s = weights @ jnp.asarray(plan.ws_map.T, real) + jnp.asarray(plan.s_const, real)
        t_b = inputs @ jnp.asarray(plan.in_map.T, real) + (
            weights @ jnp.asarray(plan.wb_map.T, real) + jnp.asarray(plan.b_const, real)
        )
        return core(t_b, t_s)

    return simulate
