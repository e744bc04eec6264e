"""Fused C kernels for the JAX statevector simulator (``SimulatorOptions(kernel="native")``)."""

from quantum.native.kernel import KIND_COMPLEX, KIND_PHASE, KIND_REAL, FactorLayout, NativeLibrary, Program

__all__ = ["KIND_COMPLEX", "KIND_PHASE", "KIND_REAL", "FactorLayout", "NativeLibrary", "Program"]
