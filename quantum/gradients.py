"""Gradient rules for non-differentiable backends, and their wiring into JAX.

``callback_qnn`` turns a backend's numpy ``evaluate`` into a JAX function with ``jax.pure_callback`` and gives it
a ``jax.custom_vjp`` whose backward pass asks a gradient rule (exact parameter shift, or SPSA) for the
vector-Jacobian product, so a training loop runs unchanged on any backend.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from quantum.backends import Backend
from quantum.circuits import QnnCircuit
from quantum.errors import QuantumSpecError
from quantum.shift import parameter_shift_jacobian, split_occurrences
from quantum.statevector import QnnFunction


class GradientRule(Protocol):
    """Computes ``(d<g, f>/d inputs [B, k], d<g, f>/d weights [P])`` for cotangent ``g[B, m]``."""

    def vjp(
        self, backend: Backend, qc: QnnCircuit, inputs: np.ndarray, weights: np.ndarray, cotangent: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


def _rows(inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs, np.float64)
    return np.concatenate([inputs, np.broadcast_to(np.asarray(weights, np.float64), (len(inputs), len(weights)))], 1)


@dataclass(frozen=True)
class ParameterShift:
    """Exact gradients by the parameter-shift rule (2 circuits per RY occurrence, 4 per CRZ, per example)."""

    def vjp(self, backend, qc, inputs, weights, cotangent):
        jac = parameter_shift_jacobian(backend.evaluate, split_occurrences(qc), _rows(inputs, weights))
        g = np.einsum("bm,bms->bs", np.asarray(cotangent, np.float64), jac)
        k = len(qc.input_symbols)
        return g[:, :k], g[:, k:].sum(axis=0)


@dataclass(frozen=True)
class Spsa:
    """Simultaneous-perturbation gradient estimates: 2 circuits per example and sample, whatever the size.

    The +-1 perturbations come from a generator seeded by ``seed`` and the argument values, so the rule is a
    pure function (same arguments, same estimate) yet differs from step to step as the weights change.

    Attributes:
        seed: base seed.
        epsilon: perturbation size in radians.
        samples: independent perturbations averaged per call.
    """

    seed: int = 0
    epsilon: float = 0.05
    samples: int = 1

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or self.samples < 1:
            raise QuantumSpecError(f"Spsa(epsilon={self.epsilon}, samples={self.samples}): need epsilon > 0, samples >= 1")

    def _rng(self, *arrays: np.ndarray) -> np.random.Generator:
        digest = hashlib.blake2b(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays), digest_size=8)
        return np.random.default_rng([self.seed, int.from_bytes(digest.digest(), "little")])

    def vjp(self, backend, qc, inputs, weights, cotangent):
        inputs, weights = np.asarray(inputs, np.float64), np.asarray(weights, np.float64)
        g = np.asarray(cotangent, np.float64)
        rng = self._rng(inputs, weights, g)
        s, b, eps = self.samples, len(inputs), self.epsilon
        dx = rng.choice([-1.0, 1.0], size=(s, *inputs.shape))
        dw = rng.choice([-1.0, 1.0], size=(s, *weights.shape))
        rows = [_rows(inputs + sign * eps * dx[i], weights + sign * eps * dw[i]) for i in range(s) for sign in (1, -1)]
        f = backend.evaluate(qc, np.concatenate(rows)).reshape(s, 2, b, -1)  # one call: the backend can batch
        slope = ((f[:, 0] - f[:, 1]) * g).sum(axis=2) / (2 * eps)  # [s, b] per-example directional derivatives
        g_x = np.einsum("sb,sbk->bk", slope, dx) / s
        g_w = np.einsum("s,sp->p", slope.sum(axis=1), dw) / s
        return g_x, g_w


def callback_qnn(qc: QnnCircuit, backend: Backend, rule: GradientRule) -> QnnFunction:
    """``f(inputs[B, k], weights[P]) -> float32[B, m]`` on a numpy backend, differentiable through ``rule``."""
    m = qc.n_outputs

    def forward_np(inputs, weights):
        return np.asarray(backend.evaluate(qc, _rows(inputs, weights)), np.float32)

    def vjp_np(inputs, weights, cotangent):
        g_x, g_w = rule.vjp(backend, qc, inputs, weights, cotangent)
        return np.asarray(g_x, np.float32), np.asarray(g_w, np.float32)

    def call(inputs, weights):
        out = jax.ShapeDtypeStruct((inputs.shape[0], m), jnp.float32)
        return jax.pure_callback(forward_np, out, inputs, weights, vmap_method="sequential")

    @jax.custom_vjp
    def f(inputs, weights):
        return call(inputs, weights)

    def f_fwd(inputs, weights):
        return call(inputs, weights), (inputs, weights)

    def f_bwd(res, g):
        inputs, weights = res
        shapes = (jax.ShapeDtypeStruct(inputs.shape, jnp.float32), jax.ShapeDtypeStruct(weights.shape, jnp.float32))
        g_x, g_w = jax.pure_callback(vjp_np, shapes, inputs, weights, g, vmap_method="sequential")
        return g_x.astype(inputs.dtype), g_w.astype(weights.dtype)

    f.defvjp(f_fwd, f_bwd)

    def simulate(inputs, weights):
        return f(jnp.asarray(inputs, jnp.float32), jnp.asarray(weights, jnp.float32))

    return simulate
