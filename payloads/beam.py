"""Beam instrumentation monitor: momentum, time of flight, Cherenkov bits, beam profile, PID.

The protoDUNE-SP H4-VLE beam line measures, for each beam particle, its momentum with a
spectrometer, its time of flight (TOF) between two scintillator planes about 28.6 m apart, two
threshold Cherenkov counters and its position at the beam plane. Particle identification here
uses only TOF and the Cherenkov bits read from the raw file (never the simulator's truth).
"""

from __future__ import annotations

import hist
import numpy as np
import pandas
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .products import PayloadResult, new_figure
from .rawformat import BEAM_DTYPE, RawFile

__all__ = [
    "C_M_PER_NS",
    "MASS_GEV",
    "PID_LABELS",
    "TOF_BASELINE_M",
    "analyse",
    "beam_histograms",
    "beam_summary",
    "collect_particles",
    "expected_tof_ns",
    "identify_particles",
    "pid_counts",
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


# --------------------------------------------------------------------------------------------
# Particle identification

PID_LABELS = ("e", "pi/mu", "p", "unknown")
"""Identified types, in the order used by histograms and summaries."""


def identify_particles(
    tof_ns: np.ndarray,
    ckov0: np.ndarray,
    ckov1: np.ndarray,
    momentum_gev: np.ndarray,
    *,
    baseline_m: float = TOF_BASELINE_M,
    tof_resolution_ns: float = 0.5,
) -> np.ndarray:
    """Identify beam particles from time of flight and the two Cherenkov bits.

    ``ckov0`` is the high-threshold counter (only electrons fire it at protoDUNE momenta) and
    ``ckov1`` the low-threshold one (electrons, muons and pions fire it, protons do not).
    At the measured momentum, a particle is *heavy* when its TOF is above the midpoint of the
    pion and proton expectations, and *clearly heavy* when it is also more than 5 resolutions
    above the pion expectation (at high momentum only the Cherenkov bits separate e, pi, p).

    * ``ckov0`` fired and not clearly heavy: ``e``
    * only ``ckov1`` fired and not clearly heavy: ``pi/mu``
    * no Cherenkov bit and heavy: ``p``
    * anything else (light without Cherenkov light, clearly heavy with it), a TOF more than 5
      resolutions outside the [e, p] expectations, or a non-positive momentum: ``unknown``

    Args:
        tof_ns: time of flight [ns], shape (n,).
        ckov0, ckov1: Cherenkov bits (0/1), shape (n,).
        momentum_gev: measured momentum [GeV/c], shape (n,).
        baseline_m: TOF flight distance [m].
        tof_resolution_ns: TOF resolution [ns], sets the plausibility window.

    Returns:
        ``<U7`` array of shape (n,) with values from :data:`PID_LABELS`.
    """
    tof = np.asarray(tof_ns, dtype=np.float64)
    c0 = np.asarray(ckov0).astype(bool)
    c1 = np.asarray(ckov1).astype(bool)
    p = np.asarray(momentum_gev, dtype=np.float64)
    tof_e = expected_tof_ns(p, MASS_GEV["e"], baseline_m)
    tof_pi = expected_tof_ns(p, MASS_GEV["pi"], baseline_m)
    tof_p = expected_tof_ns(p, MASS_GEV["p"], baseline_m)
    window = 5.0 * tof_resolution_ns
    plausible = (tof > tof_e - window) & (tof < tof_p + window) & (p > 0)
    heavy = tof > 0.5 * (tof_pi + tof_p)
    clearly_heavy = heavy & (tof > tof_pi + window)
    out = np.full(tof.shape, "unknown", dtype="<U7")
    out[plausible & heavy & ~c0 & ~c1] = "p"
    out[plausible & ~clearly_heavy & c0] = "e"
    out[plausible & ~clearly_heavy & ~c0 & c1] = "pi/mu"
    return out


def pid_counts(labels: np.ndarray) -> dict[str, int]:
    """Count identified types: ``{label: n}`` for every label of :data:`PID_LABELS`."""
    labels = np.asarray(labels)
    return {label: int(np.count_nonzero(labels == label)) for label in PID_LABELS}


# --------------------------------------------------------------------------------------------
# The monitor


def collect_particles(raw: RawFile, n_events: int | None = None) -> pandas.DataFrame:
    """Read the beam particles of the first ``n_events`` events (all if None).

    Returns:
        One row per particle: ``event`` (index), ``timestamp_ns``, ``trigger`` and the
        :data:`~p3s.payloads.rawformat.BEAM_DTYPE` fields (tof_ns [ns], ckov0, ckov1,
        momentum_gev [GeV/c], x_mm, y_mm [mm]).
    """
    stop = raw.n_events if n_events is None else min(n_events, raw.n_events)
    parts = []
    for i in range(stop):
        beam = raw.read_beam(i)
        if beam.size == 0:
            continue
        timestamp, trigger = raw.event_meta(i)
        frame = pandas.DataFrame({name: beam[name] for name in BEAM_DTYPE.names})
        frame.insert(0, "trigger", trigger)
        frame.insert(0, "timestamp_ns", timestamp)
        frame.insert(0, "event", i)
        parts.append(frame)
    if not parts:
        dtypes = {"event": "int64", "timestamp_ns": "int64", "trigger": "int64"}
        dtypes.update({name: BEAM_DTYPE[name].str for name in BEAM_DTYPE.names})
        return pandas.DataFrame({c: pandas.Series(dtype=t) for c, t in dtypes.items()})
    return pandas.concat(parts, ignore_index=True)


def beam_histograms(particles: pandas.DataFrame) -> dict[str, hist.Hist]:
    """Fill the monitor's histograms from :func:`collect_particles` plus a ``pid`` column.

    Returns:
        ``momentum`` [GeV/c], ``tof`` [ns], ``ckov`` (2x2 bits), ``profile`` (x, y [mm]),
        ``tof_vs_momentum`` and ``pid`` (identified type).
    """
    h = {
        "momentum": hist.Hist.new.Reg(600, 0.0, 12.0, name="p", label="momentum [GeV/c]").Double(),
        "tof": hist.Hist.new.Reg(
            200, 80.0, 180.0, name="tof", label="time of flight [ns]"
        ).Double(),
        "ckov": hist.Hist.new.Integer(0, 2, name="ckov0", label="Cherenkov 0")
        .Integer(0, 2, name="ckov1", label="Cherenkov 1")
        .Double(),
        "profile": hist.Hist.new.Reg(60, -60.0, 60.0, name="x", label="x [mm]")
        .Reg(60, -60.0, 60.0, name="y", label="y [mm]")
        .Double(),
        "tof_vs_momentum": hist.Hist.new.Reg(60, 0.0, 12.0, name="p", label="momentum [GeV/c]")
        .Reg(100, 80.0, 180.0, name="tof", label="time of flight [ns]")
        .Double(),
        "pid": hist.Hist(hist.axis.StrCategory(list(PID_LABELS), name="pid", label="identified")),
    }
    h["momentum"].fill(particles["momentum_gev"].to_numpy())
    h["tof"].fill(particles["tof_ns"].to_numpy())
    h["ckov"].fill(
        particles["ckov0"].to_numpy().astype(np.int64),
        particles["ckov1"].to_numpy().astype(np.int64),
    )
    h["profile"].fill(particles["x_mm"].to_numpy(), particles["y_mm"].to_numpy())
    h["tof_vs_momentum"].fill(particles["momentum_gev"].to_numpy(), particles["tof_ns"].to_numpy())
    h["pid"].fill(particles["pid"].to_numpy().astype(str))
    return h


def _stats(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation, NaN for no values."""
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


def beam_summary(particles: pandas.DataFrame, n_events: int, n_beam_triggers: int) -> dict:
    """Key numbers: counts, identified types, momentum [GeV/c], TOF [ns], beam spot [mm]."""
    p_mean, p_rms = _stats(particles["momentum_gev"].to_numpy())
    x_mean, x_rms = _stats(particles["x_mm"].to_numpy())
    y_mean, y_rms = _stats(particles["y_mm"].to_numpy())
    tof_by_pid = {
        label: _stats(particles.loc[particles["pid"] == label, "tof_ns"].to_numpy())[0]
        for label in PID_LABELS
    }
    return {
        "n_events": n_events,
        "n_beam_triggers": n_beam_triggers,
        "n_particles": len(particles),
        "pid_counts": pid_counts(particles["pid"].to_numpy()),
        "momentum_mean_gev": p_mean,
        "momentum_rms_gev": p_rms,
        "tof_mean_ns_by_pid": tof_by_pid,
        "beam_x_mean_mm": x_mean,
        "beam_x_rms_mm": x_rms,
        "beam_y_mean_mm": y_mean,
        "beam_y_rms_mm": y_rms,
        "ckov_fraction": {
            "ckov0": float(particles["ckov0"].mean()) if len(particles) else float("nan"),
            "ckov1": float(particles["ckov1"].mean()) if len(particles) else float("nan"),
        },
    }


def _zoom(ax: Axes, histogram: hist.Hist, pad_bins: int = 5) -> None:
    """Limit a 1-D plot's x range to the filled bins plus ``pad_bins`` on each side."""
    filled = np.flatnonzero(histogram.values() > 0)
    if filled.size:
        edges = histogram.axes[0].edges
        lo = edges[max(filled[0] - pad_bins, 0)]
        hi = edges[min(filled[-1] + 1 + pad_bins, edges.size - 1)]
        ax.set_xlim(lo, hi)


def _figures(h: dict[str, hist.Hist], title: str) -> dict[str, Figure]:
    fig = new_figure(10.0, 4.0)
    ax_p, ax_t = fig.subplots(1, 2)
    for ax, name in ((ax_p, "momentum"), (ax_t, "tof")):
        histogram = h[name]
        ax.stairs(histogram.values(), histogram.axes[0].edges)
        ax.set_xlabel(histogram.axes[0].label)
        ax.set_ylabel("particles")
        _zoom(ax, histogram)
    p = h["momentum"].axes[0].centers[np.argmax(h["momentum"].values())]
    for k, label in enumerate(("e", "pi", "p")):
        tof = float(expected_tof_ns(p, MASS_GEV[label]))
        ax_t.axvline(tof, linestyle=":", color="grey")
        ax_t.annotate(
            label, (tof, 0.95 - 0.06 * k), xycoords=("data", "axes fraction"), xytext=(3, 0),
            textcoords="offset points",
        )  # fmt: skip
    fig.suptitle(f"{title}: momentum and time of flight")

    prof = new_figure(5.5, 4.5)
    ax = prof.subplots()
    hp = h["profile"]
    mesh = ax.pcolormesh(hp.axes[0].edges, hp.axes[1].edges, hp.values().T, cmap="viridis")
    prof.colorbar(mesh, ax=ax, label="particles")
    ax.set_xlabel(hp.axes[0].label)
    ax.set_ylabel(hp.axes[1].label)
    ax.set_title(f"{title}: beam profile")

    pid = new_figure(5.5, 4.0)
    ax = pid.subplots()
    ax.bar(list(PID_LABELS), h["pid"].values())
    ax.set_ylabel("particles")
    ax.set_title(f"{title}: identified from TOF and Cherenkov")
    return {"momentum_tof": fig, "profile": prof, "pid": pid}


def analyse(raw: RawFile, *, n_events: int | None = None) -> PayloadResult:
    """Run the beam instrumentation monitor on an open raw file.

    Args:
        raw: the input file, opened with :func:`p3s.payloads.rawformat.open_raw`.
        n_events: analyse the first ``n_events`` events only (None: all).

    Returns:
        A :class:`~p3s.payloads.products.PayloadResult` named ``beam`` with the histograms of
        :func:`beam_histograms`, the summary of :func:`beam_summary`, a ``particles`` table
        and three figures. Files without beam data give empty histograms and zero counts.
    """
    particles = collect_particles(raw, n_events)
    particles["pid"] = identify_particles(
        particles["tof_ns"].to_numpy(),
        particles["ckov0"].to_numpy(),
        particles["ckov1"].to_numpy(),
        particles["momentum_gev"].to_numpy(),
    )
    read = raw.n_events if n_events is None else min(n_events, raw.n_events)
    beam_triggers = sum(raw.event_meta(i)[1] == 1 for i in range(read))
    histograms = beam_histograms(particles)
    title = f"run {raw.run} subrun {raw.subrun}"
    return PayloadResult(
        payload="beam",
        run=raw.run,
        subrun=raw.subrun,
        summary=beam_summary(particles, read, beam_triggers),
        histograms=histograms,
        tables={"particles": particles},
        figures=_figures(histograms, title),
    )
