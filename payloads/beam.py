"""Beam instrumentation monitor: momentum, time of flight, Cherenkov bits, beam profile, PID.

The protoDUNE-SP H4-VLE beam line measures, for each beam particle, its momentum with a
spectrometer, its time of flight (TOF) between two scintillator planes about 28.6 m apart, two
threshold Cherenkov counters and its position at the beam plane. Particle identification here
uses only TOF and the Cherenkov bits read from the raw file (never the simulator's truth).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "C_M_PER_NS",
    "MASS_GEV",
    "TOF_BASELINE_M",
    "expected_tof_ns",
]

C_M_PER_NS = 0.299792458
"""Speed of light [m/ns]."""
TOF_BASELINE_M = 28.6
"""Distance between the upstream and downstream TOF counters [m]."""
MASS_GEV = {"e": 0.000510999, "mu": 0.1056584, "pi": 0.1395704, "K": 0.493677, "p": 0.9382721}
"""Particle masses [GeV/c^2]."""


def expected_tof_ns(
    momentum_gev: np.ndarray | float, mass_gev: float, baseline_m: float = TOF_BASELINE_M
) -> np.ndarray:
    """Time of flight of a particle of given momentum and mass over ``baseline_m``.

    ``t = L / (beta c)`` with ``beta = p / sqrt(p^2 + m^2)``.

    Args:
        momentum_gev: momentum [GeV/c], scalar or array of any shape.
        mass_gev: mass [GeV/c^2].
        baseline_m: flight distance [m].

    Returns:
        float64 array of the same shape as ``momentum_gev``: time of flight [ns].
    """
    p = np.asarray(momentum_gev, dtype=np.float64)
    beta = p / np.sqrt(p * p + mass_gev * mass_gev)
    with np.errstate(divide="ignore"):
        return baseline_m / (beta * C_M_PER_NS)
