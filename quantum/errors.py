"""Exceptions of the quantum package: each names the offending value and says what to do."""

from __future__ import annotations


class QuantumSpecError(ValueError):
    """A circuit spec or circuit record is inconsistent (bad size, unknown option)."""


class UnsupportedGateError(ValueError):
    """A circuit holds a gate the JAX simulator cannot compile."""


class UnresolvedSymbolError(ValueError):
    """A circuit parameter uses a symbol that was not given a value (not an input or weight symbol)."""


class NonlinearParameterError(ValueError):
    """A gate parameter is not an affine expression (c0 + c1*a + c2*b + ...) of the circuit's symbols."""


class CircuitTooLargeError(MemoryError):
    """Simulating the circuit at this batch size would need more memory than allowed."""


class NativeKernelError(RuntimeError):
    """The native statevector kernel could not be built or loaded (no C compiler, a failed build)."""
