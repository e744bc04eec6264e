"""Error mitigation for shot results: readout-error inversion and zero-noise extrapolation."""

from quantum.mitigation.readout import (
    bits_to_probabilities,
    mitigate_probabilities,
    mitigated_z,
    project_to_simplex,
    z_expectations,
)
from quantum.mitigation.zne import fold_global, linear_extrapolate, richardson_extrapolate, zne

__all__ = [
    "bits_to_probabilities",
    "fold_global",
    "linear_extrapolate",
    "mitigate_probabilities",
    "mitigated_z",
    "project_to_simplex",
    "richardson_extrapolate",
    "z_expectations",
    "zne",
]
