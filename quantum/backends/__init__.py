"""Execution backends behind one protocol: JAX simulator, qsimcirq, any cirq.Sampler."""

from quantum.backends.base import Backend, DifferentiableBackend
from quantum.backends.jax_backend import JaxBackend

__all__ = ["Backend", "DifferentiableBackend", "JaxBackend"]
