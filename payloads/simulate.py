"""A simulator of protoDUNE-SP raw data in np04 raw HDF5, for tests and benchmarks.

What it injects, and a DQM payload should be able to measure from the waveforms alone:

* **Pedestals**: per channel, collection (X) about 900 ADC, induction (U, V) about 2350 ADC.
* **Noise**: per channel white + pink (1/f) noise shaped by the front-end low-pass, 2.8-5 ADC
  RMS; *noisy* channels 4-8 times that; *dead* channels either all zeros or stuck at their
  pedestal with no noise and no signal.
* **Coherent noise**: on some fibers, 1-2 sinusoids (20-500 kHz, 2-4 ADC) added to all 128
  channels of the fiber with a random phase per event.
* **Cosmic muons**: straight tracks through each APA's readout volume; the drift time of charge
  read at tick ``t`` is ``t * tick_us`` (tick 0 is the trigger time). Charge per 0.4 mm step
  follows dQ/dx with Landau (Moyal) fluctuations per 5 mm segment, attenuated by
  ``exp(-t_drift / tau)`` with the electron lifetime ``tau`` of the TPC. Collection wires see a
  unipolar Gaussian pulse (peak about 140 ADC for a MIP crossing one wire pitch near the anode),
  induction wires a bipolar pulse of about half that height. Half the tracks span most of the
  drift window so that lifetimes of 1.5-10 ms can be fitted from a 3 ms readout.
* **Photon detectors**: baseline about 1500 ADC, 2 ADC noise, single/few-photo-electron pulses
  at a known rate, and a prompt flash on beam triggers.
* **Beam instrumentation** on beam triggers: one e, mu, pi or p per event near the nominal momentum,
  time of flight over 28.6 m with 0.5 ns resolution, two threshold Cherenkov counters
  set for the nominal momentum (e fire both, mu and pi only ``ckov1``, p neither; 3%
  inefficiency, 1% noise), beam spot.

Everything injected is returned as :class:`Truth` and written under ``/truth`` (payloads must
never read it). The noise and signals are built one fiber at a time in the frequency domain
(one inverse FFT per 128 x n_ticks block), so a full 6-APA, 6000-tick event takes seconds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft
import scipy.signal
import scipy.stats

from .beam import MASS_GEV, TOF_BASELINE_M, expected_tof_ns
from .rawformat import ADC_MAX, BEAM_DTYPE, Geometry, RawWriter, read_truth

__all__ = [
    "Truth",
    "load_truth",
    "simulate_beam_particles",
    "simulate_file",
]

# Detector constants (cm, degrees, ticks)
PITCH_CM = (0.4669, 0.4669, 0.479)
"""Wire pitch of the U, V, X planes [cm]."""
WIRE_ANGLE_DEG = 35.7
"""Angle of the induction wires to the vertical [degrees]."""
APA_HEIGHT_CM = 600.0
COLLECTION_PEAK_ADC = 140.0
"""Most probable collection pulse height of a MIP crossing one wire pitch at tick 0 [ADC]."""
COLLECTION_SIGMA_TICKS = 2.0
"""Gaussian width of the collection pulse [ticks]."""
INDUCTION_SIGMA_TICKS = 2.5
"""Distance from zero crossing to each lobe of the induction pulse [ticks]."""
INDUCTION_RATIO = 0.5
"""Induction lobe height / collection peak for the same charge."""
STEP_CM = 0.04
LANDAU_SEGMENT_CM = 0.5
LANDAU_WIDTH = 0.1
"""Moyal scale relative to the most probable charge of a segment."""

# Channel populations
COLLECTION_PEDESTAL_ADC = (900.0, 30.0)
INDUCTION_PEDESTAL_ADC = (2350.0, 40.0)
COLLECTION_RMS_ADC = (2.8, 4.0)
INDUCTION_RMS_ADC = (3.5, 5.0)
NOISY_FACTOR = (4.0, 8.0)
BAD_FRACTION = 0.005
COHERENT_KHZ = (20.0, 500.0)
COHERENT_ADC = (2.0, 4.0)
PINK_CORNER_KHZ = 50.0
SHAPING_CUTOFF_KHZ = 400.0

# Photon detectors
PDS_SAMPLE_NS = 1000.0 / 150.0
PDS_BASELINE_ADC = (1500.0, 15.0)
PDS_NOISE_ADC = 2.0
PDS_SPE_ADC = 25.0
PDS_RATE_PER_US = 1.5
PDS_RISE_SAMPLES, PDS_DECAY_SAMPLES = 1.5, 12.0

# Beam
BEAM_SPECIES = ("e", "mu", "pi", "p")
BEAM_FRACTIONS = (0.34, 0.03, 0.43, 0.20)
MOMENTUM_SPREAD = 0.05
MOMENTUM_RESOLUTION = 0.01
TOF_RESOLUTION_NS = 0.5
CKOV_PION_THRESHOLD = (1.5, 0.6)
"""Pion threshold momentum of Cherenkov counters 0 and 1, in units of the nominal beam momentum
(the beam line sets the gas pressures per momentum setting: at nominal momentum counter 0 fires
for electrons only, counter 1 for electrons, muons and pions, protons fire neither)."""
CKOV_EFFICIENCY = 0.97
CKOV_NOISE = 0.01
BEAM_SPOT_MM = ((-3.0, 12.0), (2.0, 9.0))
"""(mean, sigma) of the beam position in x and y [mm]."""

BASE_TIME_NS = 1_538_352_000_000_000_000  # 2018-10-01T00:00:00Z


@dataclass
class Truth:
    """What :func:`simulate_file` injected; mirrors ``/truth``.

    Per-channel arrays are in geometry row order (``channel`` gives the offline numbers).

    Attributes:
        n_ticks: samples per channel; tick_us: sampling period [us].
        lifetimes_ms: electron lifetime per TPC number [ms].
        channel: int32 offline channel per row.
        pedestal: float64 pedestal per row [ADC].
        noise_rms: float64 RMS of white+pink noise per row [ADC] (0 for dead channels,
            coherent noise not included).
        dead_channels: offline numbers of dead channels; dead_zero: bool per dead channel,
            True when it reads all zeros, False when stuck at its pedestal.
        noisy_channels: offline numbers of noisy channels.
        coherent_lines: fiber -> frequencies [kHz]; coherent_amplitudes_adc: fiber ->
            amplitude of each line [ADC].
        n_tracks: int per event, cosmic tracks simulated; trigger: int per event.
        beam_event: event index of each beam particle; beam_species: its species (e, mu, pi,
            p).
        pds_rate_per_us: photon-detector pulse rate per channel [1/us];
            pds_sample_ns: photon-detector sampling period [ns].
        collection_peak_adc: most probable collection peak of a MIP at tick 0 [ADC].
    """

    n_ticks: int
    tick_us: float
    lifetimes_ms: dict[int, float]
    channel: np.ndarray
    pedestal: np.ndarray
    noise_rms: np.ndarray
    dead_channels: np.ndarray
    dead_zero: np.ndarray
    noisy_channels: np.ndarray
    coherent_lines: dict[int, list[float]]
    coherent_amplitudes_adc: dict[int, list[float]]
    n_tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    trigger: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    beam_event: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    beam_species: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U2"))
    pds_rate_per_us: float = PDS_RATE_PER_US
    pds_sample_ns: float = PDS_SAMPLE_NS
    collection_peak_adc: float = COLLECTION_PEAK_ADC

    def to_mapping(self) -> dict[str, Any]:
        """Return the nested mapping written under ``/truth``."""
        fibers = sorted(self.coherent_lines)
        return {
            "n_ticks": self.n_ticks,
            "tick_us": self.tick_us,
            "lifetime": {
                "tpc": np.array(sorted(self.lifetimes_ms), dtype=np.int16),
                "lifetime_ms": np.array([self.lifetimes_ms[k] for k in sorted(self.lifetimes_ms)]),
            },
            "channels": {
                "channel": self.channel,
                "pedestal": self.pedestal,
                "noise_rms": self.noise_rms,
            },
            "dead_channels": np.asarray(self.dead_channels, dtype=np.int32),
            "dead_zero": np.asarray(self.dead_zero, dtype=bool),
            "noisy_channels": np.asarray(self.noisy_channels, dtype=np.int32),
            "coherent": {
                "fiber": np.array(
                    [f for f in fibers for _ in self.coherent_lines[f]], dtype=np.int16
                ),
                "freq_khz": np.array([x for f in fibers for x in self.coherent_lines[f]]),
                "amplitude_adc": np.array(
                    [x for f in fibers for x in self.coherent_amplitudes_adc[f]]
                ),
            },
            "events": {"n_tracks": self.n_tracks, "trigger": self.trigger},
            "beam": {"event": self.beam_event, "species": self.beam_species.astype(str)},
            "pds": {"rate_per_us": self.pds_rate_per_us, "sample_ns": self.pds_sample_ns},
            "collection_peak_adc": self.collection_peak_adc,
        }

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Truth:
        """Rebuild a Truth from what :func:`p3s.payloads.rawformat.read_truth` returns."""
        coh = m["coherent"]
        lines: dict[int, list[float]] = {}
        amps: dict[int, list[float]] = {}
        for fib, freq, amp in zip(coh["fiber"], coh["freq_khz"], coh["amplitude_adc"], strict=True):
            lines.setdefault(int(fib), []).append(float(freq))
            amps.setdefault(int(fib), []).append(float(amp))
        lt = m["lifetime"]
        return cls(
            n_ticks=int(m["n_ticks"]),
            tick_us=float(m["tick_us"]),
            lifetimes_ms={
                int(t): float(v) for t, v in zip(lt["tpc"], lt["lifetime_ms"], strict=True)
            },
            channel=m["channels"]["channel"],
            pedestal=m["channels"]["pedestal"],
            noise_rms=m["channels"]["noise_rms"],
            dead_channels=m["dead_channels"],
            dead_zero=m["dead_zero"],
            noisy_channels=m["noisy_channels"],
            coherent_lines=lines,
            coherent_amplitudes_adc=amps,
            n_tracks=m["events"]["n_tracks"],
            trigger=m["events"]["trigger"],
            beam_event=np.asarray(m["beam"]["event"], dtype=np.int64),
            beam_species=np.asarray(m["beam"]["species"], dtype=str).reshape(-1),
            pds_rate_per_us=float(m["pds"]["rate_per_us"]),
            pds_sample_ns=float(m["pds"]["sample_ns"]),
            collection_peak_adc=float(m["collection_peak_adc"]),
        )


def load_truth(path: str | os.PathLike[str]) -> Truth:
    """Read ``/truth`` of a simulated file as a :class:`Truth`. For tests only."""
    return Truth.from_mapping(read_truth(path))


# --------------------------------------------------------------------------------------------
# Channels


@dataclass
class _Channels:
    pedestal: np.ndarray  # float64 (n_channels,)
    rms: np.ndarray  # float64 (n_channels,), 0 for dead
    dead: np.ndarray  # bool (n_channels,)
    dead_zero: np.ndarray  # bool (n_channels,), dead and reading zeros
    noisy: np.ndarray  # bool (n_channels,)


def _pick_channels(
    rng: np.random.Generator,
    geometry: Geometry,
    given: Sequence[int] | None,
    exclude: np.ndarray,
    what: str,
) -> np.ndarray:
    """Return a bool row mask: the given offline channels, or ~0.5% chosen at random."""
    if given is not None:
        given = np.asarray(list(given), dtype=np.int64)
        unknown = np.setdiff1d(given, geometry.channel)
        if unknown.size:
            raise ValueError(f"{what} channels {unknown.tolist()} are not in the geometry")
        return np.isin(geometry.channel, given)
    n = max(1, round(BAD_FRACTION * geometry.n_channels))
    candidates = np.flatnonzero(~exclude)
    mask = np.zeros(geometry.n_channels, dtype=bool)
    mask[rng.choice(candidates, size=min(n, candidates.size), replace=False)] = True
    return mask


def _extra_noisy(
    rng: np.random.Generator, geometry: Geometry, extra: Mapping[int, int], exclude: np.ndarray
) -> np.ndarray:
    """A bool row mask of ``n`` more noisy channels in each APA of ``extra`` (APA -> n)."""
    mask = np.zeros(geometry.n_channels, dtype=bool)
    for apa, n in extra.items():
        if int(apa) not in {int(a) for a in geometry.apas}:
            raise ValueError(f"extra_noisy names APA {apa}, not in the geometry")
        candidates = np.flatnonzero((geometry.apa == int(apa)) & ~exclude)
        if not 0 <= int(n) <= candidates.size:
            raise ValueError(
                f"extra_noisy asks for {n} noisy channels in APA {apa}, which has "
                f"{candidates.size} channels free"
            )
        mask[rng.choice(candidates, size=int(n), replace=False)] = True
    return mask


def _draw_channels(
    rng: np.random.Generator,
    geometry: Geometry,
    dead_channels: Sequence[int] | None,
    noisy_channels: Sequence[int] | None,
    extra_noisy: Mapping[int, int] | None = None,
) -> _Channels:
    n = geometry.n_channels
    collection = geometry.plane == 2
    pedestal = np.where(
        collection,
        rng.normal(*COLLECTION_PEDESTAL_ADC, n),
        rng.normal(*INDUCTION_PEDESTAL_ADC, n),
    )
    rms = np.where(
        collection, rng.uniform(*COLLECTION_RMS_ADC, n), rng.uniform(*INDUCTION_RMS_ADC, n)
    )
    dead = _pick_channels(rng, geometry, dead_channels, np.zeros(n, bool), "dead")
    noisy = _pick_channels(rng, geometry, noisy_channels, dead, "noisy")
    if extra_noisy:
        noisy |= _extra_noisy(rng, geometry, extra_noisy, dead | noisy)
    if np.any(dead & noisy):
        raise ValueError("a channel cannot be both dead and noisy")
    rms = np.where(noisy, rms * rng.uniform(*NOISY_FACTOR, n), rms)
    rms = np.where(dead, 0.0, rms)
    dead_zero = dead & (rng.random(n) < 0.5)
    return _Channels(pedestal, rms, dead, dead_zero, noisy)


def _draw_coherent(
    rng: np.random.Generator, geometry: Geometry, given: Mapping[int, Sequence[float]] | None
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    fibers = [int(f) for f in geometry.fibers]
    if given is not None:
        unknown = sorted(set(given) - set(fibers))
        if unknown:
            raise ValueError(f"coherent_lines names fibers {unknown} not in the geometry")
        lines = {int(f): [float(x) for x in v] for f, v in given.items() if len(v)}
    else:
        n_fib = max(1, len(fibers) // 4)
        chosen = rng.choice(fibers, size=n_fib, replace=False)
        lines = {
            int(f): sorted(rng.uniform(*COHERENT_KHZ, rng.integers(1, 3)).round(1).tolist())
            for f in chosen
        }
    amps = {f: rng.uniform(*COHERENT_ADC, len(v)).round(2).tolist() for f, v in lines.items()}
    return dict(sorted(lines.items())), dict(sorted(amps.items()))


def _lifetimes(geometry: Geometry, lifetimes_ms: Mapping[int, float] | float) -> dict[int, float]:
    tpcs = [int(t) for t in geometry.tpcs]
    if isinstance(lifetimes_ms, Mapping):
        missing = sorted(set(tpcs) - {int(k) for k in lifetimes_ms})
        if missing:
            raise ValueError(f"lifetimes_ms has no lifetime for TPC(s) {missing}")
        out = {t: float(lifetimes_ms[t]) for t in tpcs}
    else:
        out = dict.fromkeys(tpcs, float(lifetimes_ms))
    bad = {t: v for t, v in out.items() if not v > 0}
    if bad:
        raise ValueError(f"electron lifetimes must be > 0 ms, got {bad}")
    return out


# --------------------------------------------------------------------------------------------
# Spectra and responses


def _noise_spectrum(n_ticks: int, tick_us: float) -> np.ndarray:
    """Amplitude per rfft bin giving unit-variance white+pink, low-passed noise via irfft."""
    f_khz = np.fft.rfftfreq(n_ticks, d=tick_us) * 1e3
    power = np.zeros_like(f_khz)
    nz = f_khz > 0
    power[nz] = (1.0 + PINK_CORNER_KHZ / f_khz[nz]) / (1.0 + (f_khz[nz] / SHAPING_CUTOFF_KHZ) ** 4)
    amp = np.sqrt(power)
    # irfft of S_k (a + i b), a, b ~ N(0, 1): var = (4 sum_mid S_k^2 + S_nyq^2) / n^2
    nyq = amp[-1] ** 2 if n_ticks % 2 == 0 else 0.0
    mid = amp[1:-1] if n_ticks % 2 == 0 else amp[1:]
    var = (4.0 * np.sum(mid**2) + nyq) / n_ticks**2
    return (amp / np.sqrt(var)).astype(np.float32)


def _response_spectra(n_ticks: int) -> np.ndarray:
    """rfft of the unit-charge response of planes U, V, X: complex64 (3, n_ticks // 2 + 1).

    Collection: unit-area Gaussian (peak ``1 / (sqrt(2 pi) sigma_c)`` per unit charge).
    Induction: bipolar, positive lobe first, each lobe ``INDUCTION_RATIO`` of that peak.
    """
    t = np.arange(n_ticks, dtype=np.float64)
    t[t > n_ticks // 2] -= n_ticks
    peak = 1.0 / (np.sqrt(2 * np.pi) * COLLECTION_SIGMA_TICKS)
    collection = peak * np.exp(-0.5 * (t / COLLECTION_SIGMA_TICKS) ** 2)
    s = INDUCTION_SIGMA_TICKS
    induction = INDUCTION_RATIO * peak * (-t / s) * np.exp(0.5 - 0.5 * (t / s) ** 2)
    return scipy.fft.rfft(np.stack([induction, induction, collection])).astype(np.complex64)


# --------------------------------------------------------------------------------------------
# Tracks


@dataclass
class _PlaneMap:
    """Row lookup for one APA: wire coordinate -> row of adc."""

    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # rows of present wires, by wire order
    z_range_cm: tuple[float, float]
    tpc: int


def _plane_maps(geometry: Geometry) -> dict[int, _PlaneMap]:
    maps = {}
    for apa in geometry.apas:
        rows = []
        for plane in range(3):
            r = geometry.rows_where(apa=int(apa), plane=plane)
            rows.append(r[np.argsort(geometry.wire[r], kind="stable")])
        xw = geometry.wire[rows[2]]
        if xw.size == 0:
            continue
        z = (float(xw.min()) * PITCH_CM[2], float(xw.max() + 1) * PITCH_CM[2])
        tpc = int(geometry.tpc[rows[2][0]])
        maps[int(apa)] = _PlaneMap((rows[0], rows[1], rows[2]), z, tpc)
    return maps


def _track_endpoints(
    rng: np.random.Generator, n: int, z_range: tuple[float, float], n_ticks: int
) -> np.ndarray:
    """Return (n, 2, 3) endpoints (tick, y_cm, z_cm); half span most of the drift window."""
    z0, z1 = z_range
    width = z1 - z0
    ends = np.empty((n, 2, 3))
    crossing = rng.random(n) < 0.5
    # Drift-spanning tracks: from near the anode to late in the window, across most wires.
    ends[:, 0, 0] = (
        np.where(crossing, rng.uniform(0.01, 0.1, n), rng.uniform(0.01, 0.98, n)) * n_ticks
    )
    ends[:, 1, 0] = (
        np.where(crossing, rng.uniform(0.75, 0.98, n), rng.uniform(0.01, 0.98, n)) * n_ticks
    )
    za = np.where(crossing, z0 + rng.uniform(0.0, 0.2, n) * width, rng.uniform(z0, z1, n))
    zb = np.where(crossing, z1 - rng.uniform(0.0, 0.2, n) * width, rng.uniform(z0, z1, n))
    swap = rng.random(n) < 0.5
    ends[:, 0, 2] = np.where(swap, zb, za)
    ends[:, 1, 2] = np.where(swap, za, zb)
    ya = rng.uniform(50.0, APA_HEIGHT_CM - 50.0, n)
    ends[:, 0, 1] = ya
    # Keep the vertical extent comparable with the width so that tracks cross many wires.
    dy = rng.uniform(-0.5, 0.5, n) * min(width, APA_HEIGHT_CM)
    ends[:, 1, 1] = np.clip(ya + dy, 0.0, APA_HEIGHT_CM)
    return ends


def _track_deposits(
    rng: np.random.Generator,
    ends: np.ndarray,
    pmap: _PlaneMap,
    *,
    n_ticks: int,
    tick_us: float,
    drift_cm_per_tick: float,
    lifetime_us: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Charge of tracks on wires: (rows int64, ticks int64, charge float64 [ADC*tick])."""
    charge_per_cm = COLLECTION_PEAK_ADC * np.sqrt(2 * np.pi) * COLLECTION_SIGMA_TICKS / PITCH_CM[2]
    rows_out, ticks_out, q_out = [], [], []
    for a, b in ends:
        d = b - a
        length = float(np.sqrt((d[0] * drift_cm_per_tick) ** 2 + d[1] ** 2 + d[2] ** 2))
        n_steps = max(1, int(np.ceil(length / STEP_CM)))
        s = (np.arange(n_steps) + 0.5) / n_steps
        pts = a + s[:, None] * d  # (n_steps, 3): tick, y, z
        segment = (s * length / LANDAU_SEGMENT_CM).astype(np.int64)
        landau = scipy.stats.moyal.rvs(
            loc=1.0, scale=LANDAU_WIDTH, size=segment[-1] + 1, random_state=rng
        )
        tick = pts[:, 0]
        q = (
            charge_per_cm
            * (length / n_steps)
            * np.clip(landau[segment], 0.0, 10.0)
            * np.exp(-tick * tick_us / lifetime_us)
        )
        tick_i = np.rint(tick).astype(np.int64)
        ok = (tick_i >= 0) & (tick_i < n_ticks)
        y, z = pts[:, 1], pts[:, 2]
        sin, cos = np.sin(np.radians(WIRE_ANGLE_DEG)), np.cos(np.radians(WIRE_ANGLE_DEG))
        coords = (
            (z * cos + y * sin) / PITCH_CM[0],
            (z * cos - y * sin) / PITCH_CM[1],
            z / PITCH_CM[2] - pmap.z_range_cm[0] / PITCH_CM[2],
        )
        for plane, coord in enumerate(coords):
            plane_rows = pmap.rows[plane]
            if plane_rows.size == 0:
                continue
            idx = np.floor(coord).astype(np.int64)
            if plane < 2:  # induction wires wrap around the APA frame
                idx %= plane_rows.size
                keep = ok
            else:
                keep = ok & (idx >= 0) & (idx < plane_rows.size)
            rows_out.append(plane_rows[idx[keep]])
            ticks_out.append(tick_i[keep])
            q_out.append(q[keep])
    if not rows_out:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(rows_out), np.concatenate(ticks_out), np.concatenate(q_out)


# --------------------------------------------------------------------------------------------
# One event


@dataclass
class _EventSetup:
    geometry: Geometry
    channels: _Channels
    coherent: dict[int, list[float]]
    coherent_amp: dict[int, list[float]]
    noise_spec: np.ndarray
    response: np.ndarray
    n_ticks: int
    tick_us: float
    fiber_index: np.ndarray  # per row: index into geometry.fibers
    local_row: np.ndarray  # per row: position within its fiber's rows


def _setup_rows(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    fiber_index = np.empty(geometry.n_channels, dtype=np.int64)
    local_row = np.empty(geometry.n_channels, dtype=np.int64)
    for k, fiber in enumerate(geometry.fibers):
        rows = np.arange(geometry.n_channels)[geometry.rows_of_fiber(int(fiber))]
        fiber_index[rows] = k
        local_row[rows] = np.arange(rows.size)
    return fiber_index, local_row


def _event_adc(
    rng: np.random.Generator,
    setup: _EventSetup,
    deposits: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """Build one event's uint16 ADC array (n_channels, n_ticks), fiber by fiber."""
    geo, ch, n_ticks = setup.geometry, setup.channels, setup.n_ticks
    n_freq = n_ticks // 2 + 1
    adc = np.empty((geo.n_channels, n_ticks), dtype=np.uint16)
    rows, ticks, charge = deposits
    fib_of_dep = setup.fiber_index[rows]
    order = np.argsort(fib_of_dep, kind="stable")
    rows, ticks, charge, fib_of_dep = rows[order], ticks[order], charge[order], fib_of_dep[order]
    bounds = np.searchsorted(fib_of_dep, np.arange(geo.fibers.size + 1))
    t_us = np.arange(n_ticks) * setup.tick_us
    for k, fiber in enumerate(geo.fibers):
        sel = geo.rows_of_fiber(int(fiber))
        fiber_rows = np.arange(geo.n_channels)[sel]
        n_rows = fiber_rows.size
        spec = rng.standard_normal((n_rows, 2 * n_freq), dtype=np.float32).view(np.complex64)
        spec *= setup.noise_spec[None, :] * ch.rms[fiber_rows, None].astype(np.float32)
        lo, hi = bounds[k], bounds[k + 1]
        if hi > lo:
            flat = setup.local_row[rows[lo:hi]] * n_ticks + ticks[lo:hi]
            dense = np.bincount(flat, weights=charge[lo:hi], minlength=n_rows * n_ticks)
            dense = dense.reshape(n_rows, n_ticks).astype(np.float32)
            live = ~ch.dead[fiber_rows]
            spec += scipy.fft.rfft(dense) * setup.response[geo.plane[fiber_rows]] * live[:, None]
        block = scipy.fft.irfft(spec, n=n_ticks)
        for freq, amp in zip(
            setup.coherent.get(int(fiber), []), setup.coherent_amp.get(int(fiber), []), strict=True
        ):
            phase = rng.uniform(0.0, 2 * np.pi)
            block += (amp * np.sin(2 * np.pi * freq * 1e-3 * t_us + phase)).astype(np.float32)
        block += ch.pedestal[fiber_rows, None]
        dead = ch.dead[fiber_rows]
        stuck = np.where(ch.dead_zero[fiber_rows], 0.0, ch.pedestal[fiber_rows])
        block[dead] = stuck[dead, None]
        adc[sel] = np.clip(np.rint(block), 0, ADC_MAX).astype(np.uint16)
    return adc


def _pds_waveforms(
    rng: np.random.Generator, baseline: np.ndarray, n_samples: int, beam_flash: bool
) -> tuple[np.ndarray, int]:
    """Photon-detector waveforms uint16 (n_pds, n_samples) and the number of pulses."""
    n_pds = baseline.size
    window_us = n_samples * PDS_SAMPLE_NS * 1e-3
    n_pulses = rng.poisson(PDS_RATE_PER_US * window_us, n_pds)
    chan = np.repeat(np.arange(n_pds), n_pulses)
    when = rng.integers(0, n_samples, chan.size)
    amp = PDS_SPE_ADC * (1 + rng.poisson(1.5, chan.size))
    spikes = np.zeros((n_pds, n_samples))
    np.add.at(spikes, (chan, when), amp)
    if beam_flash:
        spikes[:, min(200, n_samples - 1)] += PDS_SPE_ADC * rng.poisson(20.0, n_pds)
    t = np.arange(min(n_samples, int(10 * PDS_DECAY_SAMPLES)))
    shape = np.exp(-t / PDS_DECAY_SAMPLES) - np.exp(-t / PDS_RISE_SAMPLES)
    shape /= shape.max()
    wave = scipy.signal.fftconvolve(spikes, shape[None, :], axes=1)[:, :n_samples]
    wave += baseline[:, None] + rng.normal(0.0, PDS_NOISE_ADC, wave.shape)
    return np.clip(np.rint(wave), 0, 65535).astype(np.uint16), int(n_pulses.sum())


# --------------------------------------------------------------------------------------------
# Beam


def simulate_beam_particles(
    rng: np.random.Generator,
    n: int,
    *,
    momentum_gev: float = 1.0,
    fractions: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``n`` beam-line particles.

    Args:
        rng: random generator.
        n: number of particles.
        momentum_gev: nominal beam momentum [GeV/c]; true momenta spread by 5%.
        fractions: species -> fraction (species among ``MASS_GEV``); default e/mu/pi/p
            34/3/43/20%.

    Returns:
        ``(beam, species)``: a :data:`BEAM_DTYPE` array of length ``n`` (measured momentum
        [GeV/c] with 1% resolution, TOF [ns] over 28.6 m with 0.5 ns resolution, Cherenkov bits,
        x/y [mm]) and the true species as a ``<U2`` array.
    """
    fractions = (
        dict(zip(BEAM_SPECIES, BEAM_FRACTIONS, strict=True))
        if fractions is None
        else dict(fractions)
    )
    names = list(fractions)
    prob = np.array([fractions[s] for s in names], dtype=np.float64)
    species = np.asarray(names)[rng.choice(len(names), size=n, p=prob / prob.sum())].astype("<U2")
    mass = np.array([MASS_GEV[s] for s in species])
    p_true = momentum_gev * (1.0 + MOMENTUM_SPREAD * rng.standard_normal(n))
    beam = np.zeros(n, dtype=BEAM_DTYPE)
    beam["momentum_gev"] = p_true * (1.0 + MOMENTUM_RESOLUTION * rng.standard_normal(n))
    tof = np.array(
        [expected_tof_ns(p, m, TOF_BASELINE_M) for p, m in zip(p_true, mass, strict=True)]
    )
    beam["tof_ns"] = tof + TOF_RESOLUTION_NS * rng.standard_normal(n)
    for counter, factor in enumerate(CKOV_PION_THRESHOLD):
        betagamma_threshold = factor * momentum_gev / MASS_GEV["pi"]
        above = p_true / mass > betagamma_threshold
        fired = np.where(above, rng.random(n) < CKOV_EFFICIENCY, rng.random(n) < CKOV_NOISE)
        beam[f"ckov{counter}"] = fired.astype(np.uint8)
    (mx, sx), (my, sy) = BEAM_SPOT_MM
    beam["x_mm"] = rng.normal(mx, sx, n)
    beam["y_mm"] = rng.normal(my, sy, n)
    return beam, species


# --------------------------------------------------------------------------------------------
# The file


def _default_tracks(geometry: Geometry, maps: Mapping[int, _PlaneMap]) -> dict[int, int]:
    """Ten tracks per full APA, scaled by the fibers present, at least four per APA."""
    out = {}
    for apa in maps:
        n_fib = np.unique(geometry.fiber[geometry.apa == apa]).size
        out[apa] = max(4, round(10 * n_fib / 20))
    return out


def _split_tracks(total: int, apas: Sequence[int]) -> dict[int, int]:
    base, extra = divmod(int(total), len(apas))
    return {apa: base + (i < extra) for i, apa in enumerate(apas)}


def simulate_file(
    path: str | os.PathLike[str],
    *,
    run: int = 1,
    subrun: int = 1,
    n_events: int = 5,
    geometry: Geometry | None = None,
    n_ticks: int = 6000,
    seed: int = 0,
    lifetimes_ms: Mapping[int, float] | float = 3.0,
    dead_channels: Sequence[int] | None = None,
    noisy_channels: Sequence[int] | None = None,
    coherent_lines: Mapping[int, Sequence[float]] | None = None,
    extra_noisy: Mapping[int, int] | None = None,
    tracks_per_event: int | None = None,
    beam: bool = True,
    pds: bool = True,
    compression: str | None = None,
    tick_us: float = 0.5,
    drift_speed_mm_per_us: float = 1.6,
    beam_momentum_gev: float = 1.0,
    beam_fraction: float = 0.5,
    pds_samples: int = 1000,
) -> Truth:
    """Write a simulated np04 raw HDF5 file and return what was injected.

    Args:
        path: output file (name it with :func:`p3s.payloads.rawformat.raw_filename`).
        run, subrun: numbers written in the root attributes.
        n_events: events to write.
        geometry: channel map; default :meth:`Geometry.reduced` (1 APA, 4 fibers).
        n_ticks: samples per channel (6000 = 3 ms for protoDUNE-SP).
        seed: seed of the random generator; same seed and arguments give the same file
            contents (except the ``created`` attribute).
        lifetimes_ms: electron lifetime [ms], one value for every TPC or TPC number -> value.
        dead_channels, noisy_channels: offline channel numbers; None picks ~0.5% at random.
        coherent_lines: fiber -> frequencies [kHz]; None picks a quarter of the fibers with
            1-2 lines in 20-500 kHz; ``{}`` for none.
        extra_noisy: APA -> number of noisy channels added in that APA, chosen at random
            among its live channels (beside ``noisy_channels``).
        tracks_per_event: cosmic tracks per event, spread over the APAs; None = 10 per full
            APA scaled by the fibers present, at least 4 per APA.
        beam: write beam-instrumentation data on beam triggers (trigger 1, ``beam_fraction``
            of the events); if False every trigger is 0.
        pds: write photon-detector waveforms (if the geometry lists PDS channels).
        compression: None, ``"lzf"`` or ``"gzip"``.
        tick_us: TPC sampling period [us]; drift_speed_mm_per_us: drift speed [mm/us].
        beam_momentum_gev: nominal beam momentum [GeV/c].
        pds_samples: samples per photon-detector waveform (6.67 ns each).

    Returns:
        The :class:`Truth`, also written under ``/truth``.
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    rng = np.random.default_rng(seed)
    geometry = Geometry.reduced() if geometry is None else geometry
    lifetimes = _lifetimes(geometry, lifetimes_ms)
    channels = _draw_channels(rng, geometry, dead_channels, noisy_channels, extra_noisy)
    lines, amps = _draw_coherent(rng, geometry, coherent_lines)
    fiber_index, local_row = _setup_rows(geometry)
    setup = _EventSetup(
        geometry,
        channels,
        lines,
        amps,
        _noise_spectrum(n_ticks, tick_us),
        _response_spectra(n_ticks),
        n_ticks,
        tick_us,
        fiber_index,
        local_row,
    )
    maps = _plane_maps(geometry)
    per_apa = (
        _default_tracks(geometry, maps)
        if tracks_per_event is None
        else _split_tracks(tracks_per_event, sorted(maps))
    )
    pds_baseline = rng.normal(*PDS_BASELINE_ADC, geometry.n_pds_channels)
    drift_cm_per_tick = drift_speed_mm_per_us * tick_us / 10.0
    times = BASE_TIME_NS + run * 3_600 * 10**9 + subrun * 60 * 10**9
    n_tracks, triggers, beam_event, beam_species = [], [], [], []

    with RawWriter(
        path,
        run=run,
        subrun=subrun,
        geometry=geometry,
        n_ticks=n_ticks,
        tick_us=tick_us,
        drift_speed_mm_per_us=drift_speed_mm_per_us,
        compression=compression,
    ) as writer:
        for event in range(n_events):
            times += int(rng.exponential(0.2) * 1e9) + 1
            trigger = int(beam and rng.random() < beam_fraction)
            rows, ticks, charge = [], [], []
            for apa, pmap in maps.items():
                ends = _track_endpoints(rng, per_apa.get(apa, 0), pmap.z_range_cm, n_ticks)
                r, t, q = _track_deposits(
                    rng,
                    ends,
                    pmap,
                    n_ticks=n_ticks,
                    tick_us=tick_us,
                    drift_cm_per_tick=drift_cm_per_tick,
                    lifetime_us=lifetimes[pmap.tpc] * 1e3,
                )
                rows.append(r)
                ticks.append(t)
                charge.append(q)
            deposits = (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(ticks) if ticks else np.zeros(0, np.int64),
                np.concatenate(charge) if charge else np.zeros(0),
            )
            adc = _event_adc(rng, setup, deposits)
            pds_wave = None
            if pds and geometry.n_pds_channels:
                pds_wave, _ = _pds_waveforms(rng, pds_baseline, pds_samples, trigger == 1)
            beam_rows = None
            if trigger == 1:
                beam_rows, species = simulate_beam_particles(rng, 1, momentum_gev=beam_momentum_gev)
                beam_event.extend([event] * len(species))
                beam_species.extend(species.tolist())
            writer.add_event(adc, timestamp_ns=times, trigger=trigger, pds=pds_wave, beam=beam_rows)
            n_tracks.append(sum(per_apa.get(apa, 0) for apa in maps))
            triggers.append(trigger)

        truth = Truth(
            n_ticks=n_ticks,
            tick_us=tick_us,
            lifetimes_ms=lifetimes,
            channel=geometry.channel.copy(),
            pedestal=channels.pedestal,
            noise_rms=channels.rms,
            dead_channels=geometry.channel[channels.dead],
            dead_zero=channels.dead_zero[channels.dead],
            noisy_channels=geometry.channel[channels.noisy],
            coherent_lines=lines,
            coherent_amplitudes_adc=amps,
            n_tracks=np.asarray(n_tracks, dtype=np.int64),
            trigger=np.asarray(triggers, dtype=np.int64),
            beam_event=np.asarray(beam_event, dtype=np.int64),
            beam_species=np.asarray(beam_species, dtype="<U2"),
        )
        writer.write_truth(truth.to_mapping())
    return truth
