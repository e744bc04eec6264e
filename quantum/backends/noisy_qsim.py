"""qsim as the emulator's engine: noisy circuits run as Monte-Carlo quantum trajectories (one per shot)."""

from __future__ import annotations

import cirq
import qsimcirq


def qsim_trajectory_engine(seed: int, *, cpu_threads: int = 1) -> cirq.Sampler:
    """A qsim sampler for circuits with noise channels, seeded.

    qsim samples one trajectory per repetition, so cost grows with shots but memory stays at a state vector:
    the engine for emulated devices too wide for a density matrix (beyond ~12 active qubits).

    Args:
        seed: seeds the trajectories.
        cpu_threads: qsim threads (1 or 2 time the same on small circuits).
    """
    return qsimcirq.QSimSimulator(qsimcirq.QSimOptions(cpu_threads=cpu_threads), seed=seed)
