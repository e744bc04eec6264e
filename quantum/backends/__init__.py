"""Execution backends behind one protocol: JAX simulator, qsimcirq, any cirq.Sampler."""

from quantum.backends.base import Backend, DifferentiableBackend
from quantum.backends.jax_backend import JaxBackend
from quantum.backends.qsim import QsimBackend
from quantum.backends.sampler import MEASUREMENT_KEY, SamplerBackend, estimate, standard_error

__all__ = [
    "MEASUREMENT_KEY",
    "Backend",
    "DifferentiableBackend",
    "JaxBackend",
    "QsimBackend",
    "SamplerBackend",
    "estimate",
    "standard_error",
]
