"""An honest offline stand-in for a superconducting QPU cloud: topology, native gates, noise, queue, cost."""

from quantum.emulator.calibration import Calibration, QubitCalibration
from quantum.emulator.compile import CompiledCircuit, compile_for_device, validate
from quantum.emulator.device import DeviceSpec
from quantum.emulator.emulator import Billing, DeviceEmulator, EmulatorConfig, density_matrix_engine
from quantum.emulator.engine import DensityMatrixEngine, final_density_matrix
from quantum.emulator.jobs import FailureModel, LatencyModel
from quantum.emulator.noise import add_noise, apply_confusion, apply_readout_error

__all__ = [
    "Billing",
    "Calibration",
    "CompiledCircuit",
    "DensityMatrixEngine",
    "DeviceEmulator",
    "DeviceSpec",
    "EmulatorConfig",
    "FailureModel",
    "LatencyModel",
    "QubitCalibration",
    "add_noise",
    "apply_confusion",
    "apply_readout_error",
    "compile_for_device",
    "density_matrix_engine",
    "final_density_matrix",
    "validate",
]
