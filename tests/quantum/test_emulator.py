"""The device emulator: topology, compilation and validation, calibration, noise, job lifecycle, cost."""

from __future__ import annotations

import cirq
import numpy as np
import pytest
import sympy
from scipy import stats

from quantum.backends.noisy_qsim import qsim_trajectory_engine
from quantum.emulator import (
    Calibration,
    DensityMatrixEngine,
    DeviceEmulator,
    DeviceSpec,
    EmulatorConfig,
    FailureModel,
    LatencyModel,
    add_noise,
    apply_confusion,
    compile_for_device,
    final_density_matrix,
    validate,
)
from quantum.emulator.noise import ThermalRelaxation
from quantum.qpu import (
    DevicePricing,
    DeviceValidationError,
    JobNotDoneError,
    JobState,
    JobTooLargeError,
    Program,
    SimulatedDeviceClock,
    TransientBackendError,
)

GRID = DeviceSpec(name="grid-3x3", rows=3, cols=3)


def measured_distribution(circuit: cirq.Circuit) -> np.ndarray:
    """Exact distribution of the (single) measurement key's bits, via the density matrix of the unitary part."""
    (meas,) = [op for op in circuit.all_operations() if cirq.is_measurement(op)]
    body = cirq.Circuit(op for op in circuit.all_operations() if not cirq.is_measurement(op))
    others = sorted(set(body.all_qubits()) - set(meas.qubits))
    order = list(meas.qubits) + others
    rho = (
        cirq.DensityMatrixSimulator(dtype=np.complex128)
        .simulate(body, qubit_order=order)
        .final_density_matrix
    )
    diag = np.real(np.diag(rho)).reshape(2 ** len(meas.qubits), -1).sum(axis=1)
    return diag / diag.sum()


def ring_circuit() -> cirq.Circuit:
    q = cirq.LineQubit.range(4)
    t = sympy.Symbol("t")
    return cirq.Circuit(
        [cirq.ry(t).on(x) for x in q],
        [cirq.rz(0.4 + t).controlled().on(q[i], q[(i + 1) % 4]) for i in range(4)],
        cirq.CNOT(q[0], q[2]),
        cirq.measure(*q, key="m"),
    )


def test_default_device_is_the_72_qubit_grid() -> None:
    device = DeviceSpec()
    assert device.n_qubits == 72 and len(device.qubits()) == 72
    assert len(device.couplers()) == 6 * 11 + 5 * 12
    assert all(a.is_adjacent(b) for a, b in device.couplers())


def test_calibration_round_trips_through_json_and_keeps_the_chip_connected() -> None:
    device = DeviceSpec()
    cal = Calibration.synthetic(device, seed=7, dead_coupler_fraction=0.1)
    assert len(cal.dead_couplers) == round(0.1 * len(device.couplers()))
    import networkx as nx

    assert nx.is_connected(cal.coupling_graph())
    back = Calibration.from_json(cal.to_json())
    assert back == cal
    with pytest.raises(ValueError, match="schema_version"):
        Calibration.from_json('{"schema_version": 99}')


def test_validation_names_the_non_native_gate() -> None:
    a, b = cirq.GridQubit(0, 0), cirq.GridQubit(0, 1)
    with pytest.raises(DeviceValidationError, match=r"H\(q\(0, 0\)\).*not a native gate.*PhasedXZ, CZ"):
        validate(cirq.Circuit(cirq.H(a), cirq.CZ(a, b)), GRID, Calibration.ideal(GRID))


def test_validation_rejects_an_uncoupled_pair() -> None:
    a, c = cirq.GridQubit(0, 0), cirq.GridQubit(0, 2)
    with pytest.raises(DeviceValidationError, match=r"q\(0, 0\) and q\(0, 2\) are not coupled"):
        validate(cirq.Circuit(cirq.CZ(a, c)), GRID, Calibration.ideal(GRID))


def test_validation_rejects_a_dead_coupler_and_routing_avoids_it() -> None:
    a, b = cirq.GridQubit(1, 1), cirq.GridQubit(1, 2)
    ideal = Calibration.ideal(GRID)
    cal = Calibration(
        GRID.name,
        "one-dead",
        ideal.qubits,
        {k: v for k, v in ideal.two_qubit_errors.items() if k != (a, b)},
        frozenset({(a, b)}),
    )
    with pytest.raises(DeviceValidationError, match=r"coupler q\(1, 1\)-q\(1, 2\) is dead"):
        validate(cirq.Circuit(cirq.CZ(a, b)), GRID, cal)
    # The same logical interaction compiles around the dead coupler.
    logical = cirq.Circuit(cirq.H(a), cirq.CNOT(a, b), cirq.measure(a, b, key="m"))
    compiled = compile_for_device(logical, GRID, cal).circuit
    pairs = {
        frozenset(op.qubits)
        for op in compiled.all_operations()
        if len(op.qubits) == 2 and not cirq.is_measurement(op)
    }
    assert frozenset((a, b)) not in pairs
    np.testing.assert_allclose(measured_distribution(compiled), measured_distribution(logical), atol=1e-6)


def test_compilation_routes_a_symbolic_circuit_once_and_preserves_its_distribution() -> None:
    logical = ring_circuit()
    compiled = compile_for_device(logical, GRID, Calibration.ideal(GRID))
    validate(compiled.circuit, GRID, Calibration.ideal(GRID))
    assert cirq.parameter_names(compiled.circuit) == {"t"}
    assert any(len(op.qubits) == 2 for op in compiled.circuit.all_operations())
    for t in (0.0, 0.7, -2.1):
        np.testing.assert_allclose(
            measured_distribution(cirq.resolve_parameters(compiled.circuit, {"t": t})),
            measured_distribution(cirq.resolve_parameters(logical, {"t": t})),
            atol=1e-6,
        )


def test_a_precompiled_circuit_runs_unchanged() -> None:
    a, b = cirq.GridQubit(0, 0), cirq.GridQubit(1, 0)
    native = cirq.Circuit(
        cirq.PhasedXZGate(x_exponent=0.5, z_exponent=0, axis_phase_exponent=0).on(a),
        cirq.CZ(a, b),
        cirq.CZ(a, b),
        cirq.measure(a, b, key="m"),
    )
    assert (
        compile_for_device(native, GRID, Calibration.ideal(GRID)).circuit == native
    )  # CZ·CZ is not cancelled


def test_emulator_counts_match_the_density_matrix_of_the_same_noise_model() -> None:
    """Acceptance: qsim noisy trajectories + sampled readout flips vs exact density matrix + confusion (χ²)."""
    cal = Calibration.synthetic(GRID, seed=3, scale=5.0)  # errors ×5 so the noise is plainly visible
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, seed=11), calibration=cal, clock=clock, engine=qsim_trajectory_engine
    )
    q = cirq.LineQubit.range(3)
    circuit = cirq.Circuit(
        cirq.H(q[0]),
        cirq.CNOT(q[0], q[1]),
        cirq.ry(0.7).on(q[2]),
        cirq.CNOT(q[1], q[2]),
        cirq.measure(*q, key="m"),
    )
    shots = 20_000
    program = Program(circuit, {}, shots)
    job = emulator.submit([program], client_token="chi2")
    clock.sleep(100.0)  # past the emulated queue
    (result,) = emulator.results(job)
    counts = np.bincount(result.bits("m") @ np.array([4, 2, 1]), minlength=8)

    noisy = emulator.noisy_circuit(program)
    expected = apply_confusion(
        measured_distribution(noisy), cal.confusion_matrices(result.physical_qubits["m"])
    )
    chi2 = stats.chisquare(counts, expected * shots)
    # Power check: readout error alone (no gate or idle noise) must be rejected by the same test.
    readout_only = apply_confusion(
        measured_distribution(circuit), cal.confusion_matrices(result.physical_qubits["m"])
    )
    chi2_readout_only = stats.chisquare(counts, readout_only * shots)
    print(
        f"chi2 vs noise model: {chi2.statistic:.1f} (p={chi2.pvalue:.3f}); "
        f"vs readout error only: {chi2_readout_only.statistic:.0f} (p={chi2_readout_only.pvalue:.1e})"
    )
    assert chi2.pvalue > 1e-3
    assert chi2_readout_only.pvalue < 1e-6


def test_job_lifecycle_follows_the_injected_clock() -> None:
    clock = SimulatedDeviceClock()
    latency = LatencyModel(queue_s=10.0, queue_jitter_s=0.0, per_program_s=1.0, per_shot_s=0.0)
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, latency=latency), calibration=Calibration.ideal(GRID), clock=clock
    )
    q = cirq.LineQubit(0)
    program = Program(cirq.Circuit(cirq.X(q), cirq.measure(q, key="m")), {}, 5)
    job = emulator.submit([program, program], client_token="a")
    assert emulator.submit([program, program], client_token="a") == job  # idempotent
    assert emulator.status(job).state is JobState.QUEUED
    with pytest.raises(JobNotDoneError, match="queued"):
        emulator.results(job)
    clock.sleep(10.5)
    assert emulator.status(job).state is JobState.RUNNING
    clock.sleep(2.0)
    assert emulator.status(job).state is JobState.DONE
    results = emulator.results(job)
    assert [r.bits("m").tolist() for r in results] == [[[1]] * 5] * 2
    # The device runs one job at a time: a second job queues behind the first.
    other = emulator.submit([program], client_token="b")
    emulator.cancel(other)
    assert emulator.status(other).state is JobState.CANCELLED
    assert emulator.billing().jobs == 1 and emulator.billing().shots == 10


def test_cost_model_charges_per_job_and_per_shot() -> None:
    clock = SimulatedDeviceClock()
    cost = DevicePricing(per_job=1.0, per_shot=0.01)
    emulator = DeviceEmulator(
        EmulatorConfig(device=GRID, pricing=cost), calibration=Calibration.ideal(GRID), clock=clock
    )
    q = cirq.LineQubit(0)
    circuit = cirq.Circuit(cirq.X(q), cirq.measure(q, key="m"))
    emulator.run_sweep(circuit, cirq.Points("unused", [0, 1, 2]), repetitions=100)
    assert emulator.billing().cost == pytest.approx(1.0 + 0.01 * 300)
    assert emulator.estimate_cost([Program(circuit, {}, 50)]) == pytest.approx(1.5)


def _submit_many(config: EmulatorConfig, program: Program, n: int) -> tuple[list[str], list[str]]:
    """Submit ``n`` one-program jobs a second apart; the fate of each (error kind or final state)."""
    clock = SimulatedDeviceClock()
    emulator = DeviceEmulator(config, calibration=Calibration.ideal(GRID), clock=clock)
    fates, jobs = [], []
    for i in range(n):
        try:
            jobs.append(emulator.submit([program], client_token=f"t{i}"))
            fates.append("accepted")
        except TransientBackendError as err:
            assert err.retry_after_s is not None and err.retry_after_s > 0
            fates.append(err.kind)
        clock.sleep(1.0)
    clock.sleep(1e4)
    return fates, [emulator.status(j).state.value for j in jobs]


def test_caps_and_seeded_transient_failures() -> None:
    failures = FailureModel(rate_limit=0.3, server_error=0.3, device_offline=0.1, offline_s=20.0)
    config = EmulatorConfig(device=GRID, failures=failures, seed=5, max_programs_per_job=200)
    q = cirq.LineQubit(0)
    program = Program(cirq.Circuit(cirq.X(q), cirq.measure(q, key="m")), {}, 1)
    emulator = DeviceEmulator(config, calibration=Calibration.ideal(GRID), clock=SimulatedDeviceClock())
    with pytest.raises(JobTooLargeError, match="201 programs exceed the cap of 200"):
        emulator.submit([program] * 201, client_token="big")
    fates, states = _submit_many(config, program, 300)
    assert fates.count("rate_limit") > 30
    assert fates.count("device_offline") > 30  # an outage refuses everything for 20 s
    assert 0.2 < states.count("failed") / len(states) < 0.4
    assert set(states) == {"done", "failed"}
    # Same seed and tokens → the same fates, independent of timing and thread order; another seed differs.
    assert _submit_many(config, program, 300) == (fates, states)
    other = EmulatorConfig(device=GRID, failures=failures, seed=6)
    assert _submit_many(other, program, 300)[0] != fates


def test_the_fast_density_matrix_engine_matches_cirq() -> None:
    cal = Calibration.synthetic(GRID, seed=4, scale=3.0)
    emulator = DeviceEmulator(EmulatorConfig(device=GRID), calibration=cal, clock=SimulatedDeviceClock())
    noisy = emulator.noisy_circuit(Program(ring_circuit(), {"t": 0.8}, 1))
    qubits = sorted(noisy.all_qubits())
    body = cirq.Circuit(op for op in noisy.all_operations() if not cirq.is_measurement(op))
    reference = cirq.DensityMatrixSimulator(dtype=np.complex128).simulate(body, qubit_order=qubits)
    np.testing.assert_allclose(
        final_density_matrix(noisy, qubits), reference.final_density_matrix, atol=1e-10
    )
    # Sampling: inverted measurements and several keys keep their bits.
    q = cirq.LineQubit.range(3)
    circuit = cirq.Circuit(
        cirq.X(q[0]),
        cirq.measure(q[0], q[1], key="a", invert_mask=(False, True)),
        cirq.measure(q[2], key="b"),
    )
    result = DensityMatrixEngine(seed=0).run(circuit, repetitions=5)
    assert (
        result.measurements["a"].tolist() == [[1, 1]] * 5 and result.measurements["b"].tolist() == [[0]] * 5
    )


def test_z_rotations_are_virtual_and_noise_follows_the_calibration() -> None:
    cal = Calibration.synthetic(GRID, seed=4)
    a, b = cirq.GridQubit(0, 0), cirq.GridQubit(0, 1)
    z_only = cirq.Circuit(cirq.PhasedXZGate(x_exponent=0, z_exponent=0.3, axis_phase_exponent=0).on(a))
    assert add_noise(z_only, GRID, cal) == z_only  # no time, no error
    x = cirq.PhasedXZGate(x_exponent=0.5, z_exponent=0, axis_phase_exponent=0)
    noisy = add_noise(cirq.Circuit(x.on(a), cirq.CZ(a, b)), GRID, cal)
    channels = [op.gate for op in noisy.all_operations() if not cirq.has_unitary(op)]
    assert cirq.depolarize(cal.qubits[a].single_qubit_error) in channels
    assert cirq.depolarize(cal.two_qubit_errors[(a, b)], n_qubits=2) in channels
    # Relaxation over a 2q gate time: γ = 1 − exp(−t/T1), and dephasing to the T2 envelope exp(−t/T2).
    t, c = GRID.two_qubit_gate_s, cal.qubits[b]
    relaxations = [
        g
        for op in noisy.all_operations()
        if isinstance(g := op.gate, ThermalRelaxation) and op.qubits == (b,)
    ]
    assert len(relaxations) == 2  # b idles through the 1q moment, then takes part in the CZ
    relax = relaxations[-1]
    assert np.isclose(relax.gamma, 1 - np.exp(-t / c.t1_s))
    rho = cirq.final_density_matrix(cirq.Circuit(cirq.H(b), relax.on(b)), dtype=np.complex128)
    assert np.isclose(abs(rho[0, 1]), 0.5 * np.exp(-t / c.t2_s))
