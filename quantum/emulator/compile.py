"""Compile a circuit to the device: native gates (cirq's target gatesets), routing (cirq.RouteCQC), validation.

A circuit that already runs on the device (native gates on live couplers) is accepted unchanged, as vendors
accept pre-compiled programs; this matters for zero-noise extrapolation, whose folded gates a compiler would
otherwise cancel. Anything else is compiled once per symbolic circuit and reused for every parameter assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import cirq

from quantum.emulator.calibration import Calibration
from quantum.emulator.device import DeviceSpec
from quantum.qpu.errors import DeviceValidationError


@dataclass(frozen=True)
class CompiledCircuit:
    """A device-ready circuit and where each logical qubit started.

    Attributes:
        circuit: native gates on live couplers of the device, possibly still symbolic.
        initial_mapping: logical qubit → physical qubit before the first gate (identity when pre-compiled).
    """

    circuit: cirq.Circuit
    initial_mapping: dict[cirq.Qid, cirq.Qid]


def _is_native_two_qubit(gate: cirq.Gate, device: DeviceSpec) -> bool:
    if device.gateset == "cz":
        return isinstance(gate, cirq.CZPowGate) and gate == cirq.CZ
    return isinstance(gate, cirq.ISwapPowGate) and gate in (cirq.SQRT_ISWAP, cirq.SQRT_ISWAP_INV)


def validate(circuit: cirq.AbstractCircuit, device: DeviceSpec, calibration: Calibration) -> None:
    """Check that ``circuit`` can run as is.

    Raises:
        DeviceValidationError: naming the first offending gate, qubit or pair and how to fix it.
    """
    known = set(device.qubits())
    for moment_index, moment in enumerate(circuit):
        for op in moment:
            where = f"in moment {moment_index} of a program for device {device.name!r}"
            gate = op.gate
            stray = [q for q in op.qubits if q not in known]
            if stray:
                raise DeviceValidationError(
                    f"{op} {where} acts on {stray[0]!r}, which is not a qubit of the {device.rows}x{device.cols} "
                    "grid; submit the logical circuit and let the emulator route it, or use compile_for_device()"
                )
            if isinstance(gate, cirq.MeasurementGate) or isinstance(gate, cirq.GlobalPhaseGate):
                continue
            if len(op.qubits) == 1 and isinstance(gate, cirq.PhasedXZGate):
                continue
            if len(op.qubits) == 2 and gate is not None and _is_native_two_qubit(gate, device):
                a, b = op.qubits
                if not a.is_adjacent(b):  # type: ignore[attr-defined]
                    raise DeviceValidationError(
                        f"{op} {where}: qubits {a} and {b} are not coupled; route the circuit (compile_for_device) "
                        "so two-qubit gates only act on neighbours"
                    )
                if calibration.is_dead(a, b):
                    raise DeviceValidationError(
                        f"{op} {where}: the coupler {a}-{b} is dead in calibration {calibration.timestamp!r}; "
                        "recompile against the current calibration so the router avoids it"
                    )
                continue
            raise DeviceValidationError(
                f"{op} {where} is not a native gate (natives: {device.native_gate_names()}); "
                "compile it with compile_for_device() or submit it without the 'precompiled' assumption"
            )


def _symbolic_to_native(op: cirq.Operation) -> cirq.OP_TREE:
    """Rewrite parameterised rotations into native-gate form without resolving their symbols.

    cirq's gatesets decompose through unitaries, which symbols do not have; these identities (up to global
    phase) keep the symbols so a parameterised circuit compiles once for every sweep point.
    """
    if not cirq.is_parameterized(op):
        return op
    gate = op.gate
    if len(op.qubits) == 1:
        (q,) = op.qubits
        if isinstance(gate, cirq.ZPowGate):
            return cirq.PhasedXZGate(x_exponent=0, z_exponent=gate.exponent, axis_phase_exponent=0).on(q)
        if isinstance(gate, cirq.XPowGate):
            return cirq.PhasedXZGate(x_exponent=gate.exponent, z_exponent=0, axis_phase_exponent=0).on(q)
        if isinstance(gate, cirq.YPowGate):
            return cirq.PhasedXZGate(x_exponent=gate.exponent, z_exponent=0, axis_phase_exponent=0.5).on(q)
        if isinstance(gate, cirq.PhasedXPowGate):
            return cirq.PhasedXZGate(
                x_exponent=gate.exponent, z_exponent=0, axis_phase_exponent=gate.phase_exponent
            ).on(q)
        if isinstance(gate, cirq.PhasedXZGate):
            return op
    if len(op.qubits) == 2:
        a, b = op.qubits
        if isinstance(gate, cirq.CZPowGate):
            # CPhase(πe) = Z_a^{e/2} Z_b^{e/2} · CNOT · Z_b^{-e/2} · CNOT, with CNOT = H_b CZ H_b.
            e = gate.exponent
            return [
                _symbolic_to_native(cirq.Z(a) ** (e / 2)),
                _symbolic_to_native(cirq.Z(b) ** (e / 2)),
                cirq.H(b),
                cirq.CZ(a, b),
                cirq.H(b),
                _symbolic_to_native(cirq.Z(b) ** (-e / 2)),
                cirq.H(b),
                cirq.CZ(a, b),
                cirq.H(b),
            ]
        if (
            isinstance(gate, cirq.ControlledGate)
            and gate.num_controls() == 1
            and isinstance(gate.sub_gate, cirq.ZPowGate)
            and gate.control_values == cirq.ProductOfSums(((1,),))
        ):
            # controlled (e^{iπse} diag(1, e^{iπe})) = Z_control^{s·e} · CZ^e
            sub = gate.sub_gate
            return [
                _symbolic_to_native(cirq.Z(a) ** (sub.global_shift * sub.exponent)),
                _symbolic_to_native(cirq.CZPowGate(exponent=sub.exponent).on(a, b)),
            ]
    raise DeviceValidationError(
        f"cannot compile the parameterised operation {op!r}: only rotations (X/Y/Z/PhasedX powers, CZ powers, "
        "controlled Z rotations) stay symbolic; resolve its parameters before submitting"
    )


def compile_for_device(
    circuit: cirq.AbstractCircuit, device: DeviceSpec, calibration: Calibration
) -> CompiledCircuit:
    """Compile ``circuit`` to native gates, route it onto live couplers and validate the result.

    Args:
        circuit: any circuit on any qubits (LineQubits, named qubits or GridQubits), symbols allowed.
        device: the target grid and gate set.
        calibration: which couplers are alive.

    Returns:
        The compiled circuit and the initial logical → physical mapping.

    Raises:
        DeviceValidationError: the circuit needs more qubits than the device has, or contains a gate that
            cannot be compiled.
    """
    circuit = cirq.Circuit(circuit) if not isinstance(circuit, cirq.Circuit) else circuit
    try:
        validate(circuit, device, calibration)
        return CompiledCircuit(circuit, {q: q for q in circuit.all_qubits()})
    except DeviceValidationError:
        pass  # not pre-compiled: compile below
    if len(circuit.all_qubits()) > device.n_qubits:
        raise DeviceValidationError(
            f"the circuit uses {len(circuit.all_qubits())} qubits but device {device.name!r} has {device.n_qubits}; "
            "use a smaller circuit or a larger DeviceSpec"
        )
    gateset = device.target_gateset()
    flat = cirq.Circuit(
        cirq.decompose(circuit, keep=lambda op: cirq.num_qubits(op) <= 2 or cirq.is_measurement(op))
    )
    flat = cirq.map_operations_and_unroll(flat, lambda op, _: _symbolic_to_native(op))
    native = cirq.optimize_for_target_gateset(flat, gateset=gateset)
    router = cirq.RouteCQC(calibration.coupling_graph())
    routed, initial_mapping, _ = router.route_circuit(native)
    # The router inserts SWAPs; decompose them and tidy single-qubit runs again.
    final = cirq.optimize_for_target_gateset(routed, gateset=gateset)
    final = cirq.drop_empty_moments(cirq.drop_negligible_operations(final))
    validate(final, device, calibration)
    return CompiledCircuit(final, dict(initial_mapping))
