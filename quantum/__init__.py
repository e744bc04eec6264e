"""Quantum circuits of QTHA, a differentiable JAX simulator and execution backends. Imports nothing of ours."""
