"""Build, load and call the fused C statevector kernels (``statevector.c`` beside this file).

The library is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a private per-user
cache (``$XDG_CACHE_HOME/qtha/native``, mode 0700), named by a hash of the source, the flags and the CPU, so a
cache shared between machines never loads a build made for another CPU. Nothing here runs at import time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantum.errors import NativeKernelError

_SOURCE = Path(__file__).with_name("statevector.c")
# -march=native: the microkernels vectorise to the CPU's widest FMA. The math flags allow vectorised sums
# (reassociation) without -ffast-math's finite-only assumption, so NaN inputs still come out as NaN.
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
          "-fopenmp", "-shared", "-fPIC")
# GCC prefers 256-bit vectors even where AVX-512 exists; the microkernel's 16-wide rows want 512 (1.6x on this
# machine's forward). The flag is x86-only, so it is passed only there.
_X86_FLAGS = ("-mprefer-vector-width=512",)
KIND_REAL, KIND_COMPLEX, KIND_PHASE = 0, 1, 2


class _Factor(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("hi", ctypes.c_int), ("d", ctypes.c_int), ("lo", ctypes.c_int),
                ("src", ctypes.c_int), ("off", ctypes.c_long)]


@dataclass(frozen=True)
class FactorLayout:
    """Where one stage factor acts: a ``d``-wide matrix on the middle axis of a plane seen as ``[hi, d, lo]``
    (``kind`` real or complex), or a diagonal phase over all ``d = 2**n`` amplitudes."""

    kind: int
    hi: int
    d: int
    lo: int

    @property
    def size(self) -> int:
        """Floats of the factor's data: the matrix (real and imaginary parts for a complex one) or cos and sin."""
        if self.kind == KIND_PHASE:
            return 2 * self.d
        return (2 if self.kind == KIND_COMPLEX else 1) * self.d * self.d


@dataclass(frozen=True)
class Program:
    """The factors of a circuit in order, each reading its data from the shared buffer (one for the batch) or from
    the example's row of the batched buffer."""

    layouts: tuple[FactorLayout, ...]
    batched: tuple[bool, ...]
    offsets: tuple[int, ...]
    shared_size: int
    row_size: int

    @classmethod
    def of(cls, layouts: list[FactorLayout], batched: list[bool]) -> Program:
        offsets, sizes = [], {False: 0, True: 0}
        for layout, b in zip(layouts, batched, strict=True):
            offsets.append(sizes[b])
            sizes[b] += layout.size
        return cls(tuple(layouts), tuple(batched), tuple(offsets), sizes[False], sizes[True])


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + "|" + "|".join(lines)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "qtha" / "native"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)  # mkdir's mode is masked by the umask and skipped for an existing directory
    return path


class NativeLibrary:
    """The compiled kernels. ``NativeLibrary.load()`` builds (once per source, flags and CPU) and loads them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        f32, i64 = ctypes.POINTER(ctypes.c_float), ctypes.c_long
        lib.qtha_forward.argtypes = [f32, i64, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Factor), f32, f32, i64, i64]
        lib.qtha_forward.restype = ctypes.c_int
        lib.qtha_backward.argtypes = [f32, f32, i64, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Factor), f32, f32,
                                      i64, i64, f32, f32]
        lib.qtha_backward.restype = ctypes.c_int
        self._lib = lib

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> NativeLibrary:
        """Build the library if this source, these flags and this CPU have no build in the cache, and load it.

        Raises:
            NativeKernelError: no C compiler, or the build failed (its output is in the message).
        """
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise NativeKernelError(
                "no C compiler for the native simulator kernel; install gcc (or set $CC), "
                "or use SimulatorOptions(kernel='xla')"
            )
        flags = _FLAGS + (_X86_FLAGS if platform.machine() in ("x86_64", "AMD64") else ())
        source = _SOURCE.read_bytes()
        key = hashlib.sha256(source + " ".join(flags).encode() + _cpu_key().encode()).hexdigest()[:16]
        directory = cache_dir or _cache_dir()
        path = directory / f"statevector-{key}.so"
        if not path.exists():
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                out = Path(tmp) / path.name
                run = subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(out)], capture_output=True, text=True,
                                     check=False)
                if run.returncode != 0:
                    raise NativeKernelError(
                        f"building the native simulator kernel with {compiler} failed: {run.stderr.strip()[-500:]}; "
                        "use SimulatorOptions(kernel='xla')"
                    )
                os.replace(out, path)  # atomic: a concurrent build of the same key writes the same bytes
        return cls(path)

    def factors(self, program: Program) -> ctypes.Array:
        """The C descriptor array of ``program``."""
        array = (_Factor * max(len(program.layouts), 1))()
        for i, (lay, b, off) in enumerate(zip(program.layouts, program.batched, program.offsets, strict=True)):
            array[i] = _Factor(lay.kind, lay.hi, lay.d, lay.lo, int(b), off)
        return array

    def forward(self, program: Program, factors: ctypes.Array, n: int, psi: np.ndarray, shared: np.ndarray,
                batched: np.ndarray) -> np.ndarray:
        """The state ``psi[B, 2, 2**n]`` after every factor of ``program`` (a new array)."""
        psi = np.array(psi, np.float32, order="C", copy=True)
        shared, batched = _floats(shared), _floats(batched)
        rc = self._lib.qtha_forward(_ptr(psi), psi.shape[0], n, len(program.layouts), factors, _ptr(shared),
                                    _ptr(batched), program.row_size, program.shared_size)
        if rc != 0:
            raise MemoryError("the native simulator kernel could not allocate its per-thread buffers")
        return psi

    def backward(self, program: Program, factors: ctypes.Array, n: int, psi: np.ndarray, lam: np.ndarray,
                 shared: np.ndarray, batched: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The adjoint pass: the state and adjoint before the first factor, and each factor's data cotangent
        (summed over the batch in the shared buffer, per example in the batched one)."""
        psi = np.array(psi, np.float32, order="C", copy=True)
        lam = np.array(lam, np.float32, order="C", copy=True)
        shared, batched = _floats(shared), _floats(batched)
        d_shared = np.zeros(program.shared_size, np.float32)
        d_batched = np.zeros((psi.shape[0], program.row_size), np.float32)
        rc = self._lib.qtha_backward(_ptr(psi), _ptr(lam), psi.shape[0], n, len(program.layouts), factors,
                                     _ptr(shared), _ptr(batched), program.row_size, program.shared_size,
                                     _ptr(d_shared), _ptr(d_batched))
        if rc != 0:
            raise MemoryError("the native simulator kernel could not allocate its per-thread buffers")
        return psi, lam, d_shared, d_batched


def _floats(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32)


def _ptr(x: np.ndarray):
    return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
