"""Readout-error mitigation and zero-noise extrapolation, on the emulator and on exact data."""

from __future__ import annotations

import cirq
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.emulator import Calibration, DeviceEmulator, DeviceSpec, EmulatorConfig, apply_confusion
from quantum.executor import Executor
from quantum.mitigation import (
    bits_to_probabilities,
    fold_global,
    linear_extrapolate,
    mitigate_probabilities,
    mitigated_z,
    project_to_simplex,
    richardson_extrapolate,
    z_expectations,
    zne,
)
from quantum.qpu import Program, SimulatedDeviceClock

GRID = DeviceSpec(name="grid-2x3", rows=2, cols=3)


def test_readout_mitigation_reduces_the_z_error_on_a_fixed_circuit() -> None:
    """Acceptance: ⟨Z_i⟩ of RY(θ_i)|0⟩ = cos θ_i, before and after inverting the calibration's confusion."""
    calibration = Calibration.synthetic(GRID, seed=2)
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(EmulatorConfig(device=GRID, seed=4), calibration=calibration, clock=clock)
    thetas = np.array([0.3, 1.2, 2.5])
    q = cirq.LineQubit.range(3)
    circuit = cirq.Circuit(
        [cirq.ry(t).on(x) for t, x in zip(thetas, q, strict=True)], cirq.measure(*q, key="m")
    )
    (result,) = Executor(emulator, clock=clock, client_id="ro").run([Program(circuit, {}, 50_000)])
    exact = np.cos(thetas)
    raw = z_expectations(bits_to_probabilities(result.bits("m")))
    mitigated = mitigated_z(result.bits("m"), calibration.confusion_matrices(result.physical_qubits["m"]))
    raw_error, mitigated_error = np.abs(raw - exact).max(), np.abs(mitigated - exact).max()
    print(
        f"<Z> exact {exact.round(4)}; raw {raw.round(4)} (max error {raw_error:.4f}); "
        f"mitigated {mitigated.round(4)} (max error {mitigated_error:.4f})"
    )
    assert raw_error > 0.03  # readout error is visible before mitigation
    assert mitigated_error < raw_error / 3
    assert mitigated_error < 0.015


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_mitigation_inverts_the_confusion_exactly(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(np.ones(2**n))
    confusions = []
    for _ in range(n):
        p01, p10 = rng.uniform(0, 0.2, size=2)
        confusions.append(np.array([[1 - p01, p10], [p01, 1 - p10]]))
    np.testing.assert_allclose(
        mitigate_probabilities(apply_confusion(truth, confusions), confusions), truth, atol=1e-9
    )


def test_simplex_projection_is_a_nearest_distribution() -> None:
    v = np.array([0.7, 0.5, -0.1, -0.1])
    p = project_to_simplex(v)
    assert p.sum() == pytest.approx(1) and (p >= 0).all()
    np.testing.assert_allclose(p, [0.6, 0.4, 0.0, 0.0])
    d = np.array([0.1, 0.2, 0.7])
    np.testing.assert_allclose(project_to_simplex(d), d)


def test_singular_confusion_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="qubit 0 is singular.*recalibrate"):
        mitigate_probabilities(np.array([0.5, 0.5]), [np.array([[0.5, 0.5], [0.5, 0.5]])])


def test_folding_keeps_the_unitary_and_multiplies_the_gates() -> None:
    q = cirq.LineQubit.range(2)
    circuit = cirq.Circuit(
        cirq.ry(0.3).on(q[0]), cirq.CZ(*q), cirq.rx(0.5).on(q[1]), cirq.measure(*q, key="m")
    )
    for scale in (1, 3, 5):
        folded = fold_global(circuit, scale)
        assert len(list(folded.all_operations())) == 3 * scale + 1
        np.testing.assert_allclose(cirq.unitary(folded[:-1]), cirq.unitary(circuit[:-1]), atol=1e-7)
        assert cirq.is_measurement(list(folded[-1].operations)[0])
    with pytest.raises(ValueError, match="odd scale"):
        fold_global(circuit, 2)


def test_extrapolation_is_exact_on_polynomials() -> None:
    scales = [1, 3, 5]
    assert richardson_extrapolate(scales, [0.9 - 0.1 * s + 0.01 * s**2 for s in scales]) == pytest.approx(0.9)
    assert linear_extrapolate(scales, [0.8 - 0.05 * s for s in scales]) == pytest.approx(0.8)


def test_zero_noise_extrapolation_reduces_the_gate_noise_bias() -> None:
    calibration = Calibration.synthetic(GRID, seed=5, scale=3.0)
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(EmulatorConfig(device=GRID, seed=8), calibration=calibration, clock=clock)
    executor = Executor(emulator, clock=clock, client_id="zne")
    q = cirq.LineQubit.range(2)
    logical = cirq.Circuit(
        cirq.ry(0.4).on(q[0]), cirq.CNOT(*q), cirq.ry(0.3).on(q[1]), cirq.CNOT(*q), cirq.measure(*q, key="m")
    )
    exact = float(np.cos(0.3))  # ⟨Z_1⟩: the second CNOT undoes the first, leaving RY(0.3) on qubit 1
    psi = cirq.final_state_vector(logical[:-1], qubit_order=q)
    assert exact == pytest.approx(z_expectations(np.abs(psi) ** 2)[1], abs=1e-6)
    native = emulator.compile(logical).circuit

    def expectation(circuits):
        results = executor.run([Program(c, {}, 100_000) for c in circuits])
        return [
            mitigated_z(r.bits("m"), calibration.confusion_matrices(r.physical_qubits["m"]))[1]
            for r in results
        ]

    estimate, values = zne(expectation, native, scales=(1, 3, 5), method="richardson")
    linear = linear_extrapolate((1, 3, 5), values)
    print(
        f"exact {exact:.4f}; noisy by scale {np.round(values, 4)}; richardson {estimate:.4f}; linear {linear:.4f}"
    )
    assert values[0] > values[1] > values[2]  # folding amplified the noise
    assert abs(estimate - exact) < abs(values[0] - exact) / 5
    assert abs(linear - exact) < abs(values[0] - exact)
