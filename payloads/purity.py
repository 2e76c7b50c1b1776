"""Purity monitor: electron lifetime per TPC from the charge of cosmic-muon tracks.

Chain, per event and APA, on the collection (X) plane only:

1. data preparation of each fiber's collection channels (:mod:`p3s.payloads.dataprep`):
   pedestal subtraction and coherent-noise removal; dead channels are left out;
2. hit finding: runs of samples above ``n_sigma`` times the channel's noise RMS; a hit has a
   charge (integral, ADC x tick) and a charge-weighted mean tick;
3. track finding: sequential RANSAC in (wire, tick) space, with ticks scaled to wire pitches
   by the drift speed: the line through two hits with the most hits near it is refitted, the
   hits near it collected, and the longest run of them without a wire gap is a track if it
   has enough hits and spans enough drift time (close parallel tracks, which a Hough
   accumulator of usable resolution merges, stay apart);
4. charge along the track: on every wire the track crosses, the waveform is integrated over
   the ticks the line predicts (not only where a hit passed the threshold, so faint charge
   late in the drift is not lost); wires shared with another track are skipped;
5. lifetime fit per TPC: ``log Q = a_track - t / tau``, a straight line in drift time with a
   free intercept per track (the track's angle to the wires and its dE/dx set the intercept):
   a robust fit of each track (the Landau tail, wires that lost charge), then a robust
   random-effects mean of the tracks' slopes, whose uncertainty includes the scatter of the
   tracks beyond their own errors (hits of one track are not independent samples).

The drift time of charge read at tick ``t`` is ``t * tick_us``: tick 0 is the trigger time,
which for these events is the time the muon crossed the detector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

import hist
import numpy as np
import pandas

from . import dataprep
from .products import PayloadResult, new_figure
from .rawformat import Geometry, RawFile, open_raw

__all__ = [
    "COLLECTION",
    "LifetimeFit",
    "Track",
    "analyse",
    "find_hits",
    "find_tracks",
    "fit_lifetime",
    "most_probable",
    "signal_to_noise",
    "track_charges",
]

PAYLOAD = "purity"
COLLECTION = 2
COLLECTION_PITCH_MM = 4.79
"""Collection wire pitch of protoDUNE-SP [mm]; the format gives wire indices only."""
HIT_SIGMA = 5.0
"""Hit threshold in units of the channel's noise RMS."""
PULSE_MARGIN_TICKS = 5
"""Ticks integrated beyond the track's extent on a wire (the pulse is about 2 ticks wide)."""
MIN_TRACK_HITS = 20
MIN_TRACK_SPAN_US = 500.0
"""A track must span at least this drift time [us] to constrain the lifetime."""
END_WIRES = 2
"""Wires left out at each end of a track: it may end inside them, or its end may be wrong."""
MIN_FIT_TRACKS = 3
MIN_FIT_WIRES = 8
"""A track needs charges on this many wires to enter the lifetime fit."""


# --------------------------------------------------------------------------------------------
# Hits


def find_hits(x: np.ndarray, rms: np.ndarray, *, n_sigma: float = HIT_SIGMA) -> dict:
    """Runs of samples above threshold on each channel of a prepared block.

    Args:
        x: ``float32`` ``(rows, ticks)``, pedestal- and coherent-noise-subtracted ADC counts of
            collection channels.
        rms: ``(rows,)`` noise RMS per row [ADC]; rows with ``rms <= 0`` get no hits.
        n_sigma: threshold in units of ``rms``.

    Returns:
        dict of 1-D arrays, one entry per hit: ``row`` (int64), ``start`` and ``stop`` (int64,
        tick range ``[start, stop)``), ``tick`` (float64, charge-weighted mean tick) and
        ``charge`` (float64, integral over the run [ADC x tick]).
    """
    rows, ticks = x.shape
    thr = np.where(np.asarray(rms) > 0, n_sigma * np.asarray(rms, np.float32), np.inf)
    above = np.zeros((rows, ticks + 2), dtype=np.int8)
    above[:, 1:-1] = x > thr[:, None]
    edges = np.diff(above, axis=1)
    r_start, start = np.nonzero(edges == 1)
    stop = np.nonzero(edges == -1)[1]  # runs end in the order they start, row by row
    # Cumulative sums with a leading zero give each run's integral by two look-ups.
    xd = x.astype(np.float64)
    cq = np.zeros((rows, ticks + 1))
    np.cumsum(xd, axis=1, out=cq[:, 1:])
    ct = np.zeros((rows, ticks + 1))
    np.cumsum(xd * np.arange(ticks), axis=1, out=ct[:, 1:])
    charge = cq[r_start, stop] - cq[r_start, start]
    moment = ct[r_start, stop] - ct[r_start, start]
    tick = np.divide(moment, charge, out=(start + stop - 1) / 2.0, where=charge > 0)
    return {"row": r_start, "start": start, "stop": stop, "tick": tick, "charge": charge}


# --------------------------------------------------------------------------------------------
# Tracks


@dataclass(frozen=True)
class Track:
    """A straight track in (wire, tick) space: ``tick = intercept + slope * wire``.

    Attributes:
        intercept: tick at wire 0 (float).
        slope: ticks per wire (float).
        wire_lo, wire_hi: first and last wire crossed (inclusive).
        n_hits: hits on the track.
        span_ticks: drift-time extent in ticks.
    """

    intercept: float
    slope: float
    wire_lo: int
    wire_hi: int
    n_hits: int
    span_ticks: float

    def tick_at(self, wire: np.ndarray) -> np.ndarray:
        """Tick of the track at the centre of ``wire`` (float64 array)."""
        return self.intercept + self.slope * np.asarray(wire, dtype=np.float64)


def _line_fit(w: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least-squares ``t = a + m w``; returns ``(a, m)``."""
    wm, tm = w.mean(), t.mean()
    dw = w - wm
    m = float(np.dot(dw, t - tm) / max(np.dot(dw, dw), 1e-12))
    return float(tm - m * wm), m


def _ransac_line(
    u: np.ndarray, v: np.ndarray, rng: np.random.Generator, n_trials: int, tol: float
) -> np.ndarray:
    """Inlier mask of the line through two hits that has the most hits within ``tol``."""
    i = rng.integers(0, u.size, n_trials)
    j = rng.integers(0, u.size, n_trials)
    du, dv = u[j] - u[i], v[j] - v[i]
    norm = np.hypot(du, dv)
    use = norm > 3.0 * tol  # pairs too close together define the direction poorly
    if not use.any():
        return np.zeros(u.size, bool)
    i, du, dv, norm = i[use], du[use], dv[use], norm[use]
    nu, nv = -dv / norm, du / norm  # unit normal of each candidate line
    c = nu * u[i] + nv * v[i]
    inside = np.abs(nu[:, None] * u[None, :] + nv[:, None] * v[None, :] - c[:, None]) < tol
    return inside[int(inside.sum(axis=1).argmax())]


def _tls_line(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, float]:
    """Total-least-squares line through points: unit normal ``n`` and ``c`` with n.p = c."""
    pts = np.stack([u, v], axis=1)
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    normal = vt[-1]
    return normal, float(normal @ centre)


def find_tracks(
    wire: np.ndarray,
    tick: np.ndarray,
    *,
    ticks_per_pitch: float,
    min_hits: int = MIN_TRACK_HITS,
    min_span_ticks: float = 1000.0,
    max_distance: float = 1.0,
    max_gap: int = 3,
    n_trials: int = 600,
    max_tracks: int = 50,
    seed: int = 0,
) -> tuple[list[Track], np.ndarray]:
    """Find straight tracks among the hits of one plane of one APA (sequential RANSAC).

    Coordinates are scaled so that one unit is one wire pitch along both axes
    (``v = tick / ticks_per_pitch``). Repeatedly: among ``n_trials`` lines through random
    pairs of hits, the one with the most hits within ``max_distance`` wins; a total-least-
    squares line through those hits collects the hits within ``max_distance`` again (twice);
    the longest run of them along the wires without a gap larger than ``max_gap`` wires is a
    track if it has ``min_hits`` hits and spans ``min_span_ticks``. The run's hits leave the
    pool either way, so the search always ends.

    Args:
        wire: ``(n,)`` wire index of each hit.
        tick: ``(n,)`` tick of each hit.
        ticks_per_pitch: ticks of drift equal to one wire pitch (pitch / (v_drift * tick)).
        min_hits: minimum hits on a track.
        min_span_ticks: minimum drift extent of a track [ticks].
        max_distance: hit-to-line distance cut [pitches].
        max_gap: largest gap in wires inside a track.
        n_trials: random line candidates per track.
        max_tracks: stop after this many tracks.
        seed: seed of the candidate sampling (the result is reproducible).

    Returns:
        ``(tracks, label)``: the list of :class:`Track` and an int64 ``(n,)`` array giving the
        index of the track each hit belongs to (-1 for none).
    """
    w = np.asarray(wire, dtype=np.float64)
    v = np.asarray(tick, dtype=np.float64) / ticks_per_pitch
    rng = np.random.default_rng(seed)
    label = np.full(w.size, -1, dtype=np.int64)
    pool = np.arange(w.size)
    tracks: list[Track] = []
    while pool.size >= min_hits and len(tracks) < max_tracks:
        inside = _ransac_line(w[pool], v[pool], rng, n_trials, max_distance)
        if inside.sum() < min_hits:
            break
        members = _collect(w, v, pool, pool[inside], max_distance, max_gap)
        if members.size == 0:
            members = pool[inside]
        pool = np.setdiff1d(pool, members, assume_unique=True)
        if members.size < min_hits or np.ptp(w[members]) == 0:
            continue
        a, m = _line_fit(w[members], v[members])
        span = float(np.ptp(v[members]) * ticks_per_pitch)
        if span < min_span_ticks:
            continue
        label[members] = len(tracks)
        tracks.append(
            Track(
                intercept=a * ticks_per_pitch,
                slope=m * ticks_per_pitch,
                wire_lo=int(w[members].min()),
                wire_hi=int(w[members].max()),
                n_hits=int(members.size),
                span_ticks=span,
            )
        )
    return tracks, label


def _collect(w, v, pool, seed_hits, max_distance, max_gap) -> np.ndarray:
    """Hits of ``pool`` near the line through ``seed_hits``, longest run without a gap."""
    members = seed_hits
    for _ in range(2):
        if members.size < 2:
            return members[:0]
        normal, c = _tls_line(w[members], v[members])
        members = pool[np.abs(normal[0] * w[pool] + normal[1] * v[pool] - c) < max_distance]
    order = members[np.argsort(w[members], kind="stable")]
    if order.size == 0:
        return order
    gaps = np.flatnonzero(np.diff(w[order]) > max_gap)
    bounds = np.r_[0, gaps + 1, order.size]
    longest = int(np.argmax(np.diff(bounds)))
    return order[bounds[longest] : bounds[longest + 1]]


def track_charges(
    x: np.ndarray,
    wires: np.ndarray,
    good: np.ndarray,
    tracks: list[Track],
    hits: dict | None = None,
    label: np.ndarray | None = None,
    *,
    margin: int = PULSE_MARGIN_TICKS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Charge collected on each wire a track crosses, integrated over the predicted ticks.

    On wire ``w`` the track's charge arrives between the ticks of the line at the wire's two
    edges; the window adds ``margin`` ticks on each side for the pulse width. A wire is
    skipped when its window leaves the readout, the channel is dead, the window overlaps
    another track's window, or (given the hits) a hit overlapping the window belongs to
    something else or sticks out of it (charge of another particle merged in). The first and
    last wire of a track are skipped: the track may end inside them.

    Args:
        x: ``float32`` ``(rows, ticks)`` prepared collection waveforms of one APA [ADC].
        wires: ``(rows,)`` wire index of each row.
        good: ``(rows,)`` bool, False for dead channels.
        tracks: the tracks of this APA and event.
        hits: the hits of :func:`find_hits` on ``x``, or None.
        label: ``(n_hits,)`` track index of each hit (-1 for none), with ``hits``.
        margin: ticks added on each side of the window.

    Returns:
        one ``(tick, charge)`` pair per track: ``float64`` arrays of the track's tick at each
        usable wire centre and the charge there [ADC x tick].
    """
    rows, ticks = x.shape
    slot = np.full(int(np.max(wires)) + 2, -1, dtype=np.int64)
    slot[np.asarray(wires)] = np.arange(rows)
    cq = np.zeros((rows, ticks + 1))
    np.cumsum(x, axis=1, dtype=np.float64, out=cq[:, 1:])
    windows = []
    for trk in tracks:
        wire = np.arange(trk.wire_lo + END_WIRES, trk.wire_hi - END_WIRES + 1)
        centre = trk.tick_at(wire)
        half = 0.5 * abs(trk.slope) + margin
        row = slot[np.clip(wire, 0, slot.size - 1)]
        windows.append((row, centre, np.floor(centre - half), np.ceil(centre + half) + 1))
    out = []
    for k, (row, centre, lo, hi) in enumerate(windows):
        ok = (row >= 0) & (lo >= 0) & (hi <= ticks)
        ok[ok] &= good[row[ok]]
        for j, (row2, _c2, lo2, hi2) in enumerate(windows):
            if j != k:
                _, i1, i2 = np.intersect1d(row, row2, return_indices=True)
                ok[i1[(lo[i1] < hi2[i2]) & (lo2[i2] < hi[i1])]] = False
        if hits is not None and label is not None:
            ok &= ~_foreign_charge(row, lo, hi, hits, label, k, rows)
        r, a, b = row[ok], lo[ok].astype(np.int64), hi[ok].astype(np.int64)
        out.append((centre[ok], cq[r, b] - cq[r, a]))
    return out


def _foreign_charge(row, lo, hi, hits, label, k, n_rows) -> np.ndarray:
    """True for windows that a hit of something other than track ``k`` touches."""
    win_of_row = np.full(n_rows, -1, dtype=np.int64)
    valid = row >= 0
    win_of_row[row[valid]] = np.flatnonzero(valid)
    wi = win_of_row[hits["row"]]
    on = wi >= 0
    wi, start, stop, lab = wi[on], hits["start"][on], hits["stop"][on], label[on]
    overlap = (start < hi[wi]) & (stop > lo[wi])
    bad = overlap & ((lab != k) | (start < lo[wi]) | (stop > hi[wi]))
    flags = np.zeros(row.size, bool)
    flags[wi[bad]] = True
    return flags


# --------------------------------------------------------------------------------------------
# Lifetime fit


@dataclass(frozen=True)
class LifetimeFit:
    """Result of :func:`fit_lifetime`.

    Attributes:
        lifetime_ms: electron lifetime [ms] (inf when the charge does not fall with time).
        error_ms: its one-sigma uncertainty [ms].
        slope_per_ms: fitted ``d log Q / dt`` [1/ms] (``-1 / lifetime``).
        slope_error_per_ms: uncertainty of the slope [1/ms].
        n_tracks: tracks used.
        n_hits: wire charges used.
    """

    lifetime_ms: float
    error_ms: float
    slope_per_ms: float
    slope_error_per_ms: float
    n_tracks: int
    n_hits: int


def _huber_weights(r: np.ndarray, scale, k: float = 1.345) -> np.ndarray:
    a = np.abs(r) / np.maximum(scale, 1e-12)
    return np.where(a <= k, 1.0, k / np.maximum(a, 1e-12))


def _tukey_weights(r: np.ndarray, scale, c: float = 4.685) -> np.ndarray:
    a = np.abs(r) / np.maximum(c * scale, 1e-12)
    return np.where(a < 1.0, (1.0 - a * a) ** 2, 0.0)


def _group_sums(groups: np.ndarray, n_groups: int, *values: np.ndarray) -> list[np.ndarray]:
    return [np.bincount(groups, weights=v, minlength=n_groups) for v in values]


def _group_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` within each group (0 for empty groups)."""
    order = np.lexsort((values, groups))
    counts = np.bincount(groups, minlength=n_groups)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    lo = start + np.maximum(counts - 1, 0) // 2
    hi = start + counts // 2
    v = values[order]
    med = np.zeros(n_groups)
    has = counts > 0
    med[has] = 0.5 * (v[lo[has]] + v[np.minimum(hi[has], v.size - 1)])
    return med


def _tukey_psi(a: np.ndarray, c: float = 4.685) -> tuple[np.ndarray, np.ndarray]:
    """Tukey biweight psi(a) and its derivative psi'(a)."""
    u = (a / c) ** 2
    inside = u < 1.0
    psi = np.where(inside, a * (1.0 - u) ** 2, 0.0)
    dpsi = np.where(inside, (1.0 - u) * (1.0 - 5.0 * u), 0.0)
    return psi, dpsi


def track_slopes(
    groups: np.ndarray, n_groups: int, t: np.ndarray, y: np.ndarray, *, n_iter: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Robust straight-line fit ``y = a + b t`` of every track at once.

    ``n_iter`` Huber then ``n_iter`` Tukey-biweight reweighting iterations, with each track's
    own residual scale (1.4826 MAD; a track's charge resolution depends on its path per wire).
    The variance of each slope is the M-estimator sandwich
    ``s^2 sum(psi(r/s) dt)^2 / (sum psi'(r/s) dt^2)^2``, which stays honest for the points
    the biweight discards.

    Args:
        groups: ``(n,)`` track index 0..n_groups-1 of each point.
        n_groups: number of tracks.
        t: ``(n,)`` drift time [ms].
        y: ``(n,)`` log charge.
        n_iter: iterations of each kind.

    Returns:
        ``(slope, variance)``: ``float64`` ``(n_groups,)`` [1/ms] and [1/ms^2]; the variance is
        NaN for tracks that cannot constrain a slope.
    """
    w = np.ones_like(t)
    for it in range(2 * n_iter + 1):
        sw, swt, swy = _group_sums(groups, n_groups, w, w * t, w * y)
        sw = np.where(sw > 0, sw, 1.0)
        dt = t - (swt / sw)[groups]
        dy = y - (swy / sw)[groups]
        sxy, sxx = _group_sums(groups, n_groups, w * dt * dy, w * dt * dt)
        slope = sxy / np.where(sxx > 0, sxx, 1.0)
        r = dy - slope[groups] * dt
        r -= _group_median(r, groups, n_groups)[groups]
        scale = np.maximum(1.4826 * _group_median(np.abs(r), groups, n_groups), 1e-6)
        if it < 2 * n_iter:
            kind = _huber_weights if it < n_iter else _tukey_weights
            w = kind(r, scale[groups])
    psi, dpsi = _tukey_psi(r / scale[groups])
    num, den = _group_sums(groups, n_groups, (psi * dt) ** 2, dpsi * dt * dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(den > 0, scale**2 * num / den**2, np.nan)
    counts = np.bincount(groups, minlength=n_groups)
    var[(counts < MIN_FIT_WIRES) | ~(var > 0)] = np.nan
    return slope, var


def _between_track_variance(b: np.ndarray, var: np.ndarray, mean: float) -> float:
    """Extra slope variance shared by all tracks, so that the deviations have unit spread.

    Solves ``1.4826 MAD((b - mean) / sqrt(var + v)) = 1`` for ``v >= 0`` by bisection: the
    robust analogue of the Paule-Mandel estimator, blind to a few mis-reconstructed tracks.
    """

    def spread(v: float) -> float:
        return 1.4826 * float(np.median(np.abs(b - mean) / np.sqrt(var + v)))

    if spread(0.0) <= 1.0:
        return 0.0
    lo, hi = 0.0, float(np.max((b - mean) ** 2)) + 1e-12
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spread(mid) > 1.0 else (lo, mid)
    return hi


def combine_slopes(b: np.ndarray, var: np.ndarray, *, n_iter: int = 8) -> tuple[float, float, int]:
    """Robust random-effects mean of per-track slopes.

    Weights ``u_k / (var_k + v)``: ``v`` is the between-track variance of
    :func:`_between_track_variance` (angles, overlaps and end effects scatter the slopes of
    real tracks beyond their fit errors), ``u_k`` a Tukey biweight of the track's standardised
    deviation (a mis-reconstructed track gets weight 0).

    Args:
        b: ``(n,)`` slopes [1/ms].
        var: ``(n,)`` their variances.
        n_iter: reweighting iterations.

    Returns:
        ``(mean, variance, tracks used)``.
    """
    u = np.ones_like(b)
    extra = 0.0
    mean = float(np.sum(b / var) / np.sum(1.0 / var))
    for _ in range(n_iter):
        extra = _between_track_variance(b[u > 0], var[u > 0], mean)
        w = u / (var + extra)
        mean = float(np.sum(w * b) / np.sum(w))
        u = _tukey_weights((b - mean) / np.sqrt(var + extra), 1.0)
    w = u / (var + extra)
    mean = float(np.sum(w * b) / np.sum(w))
    return mean, float(1.0 / np.sum(w)), int(np.count_nonzero(u > 0))


def fit_lifetime(
    track: np.ndarray, t_ms: np.ndarray, charge: np.ndarray, *, n_iter: int = 4
) -> LifetimeFit:
    """Fit the electron lifetime to the charge of tracks vs drift time.

    Model: ``log Q = a_track - t / tau`` along each track (the intercept, set by the track's
    angle and dE/dx, is free). Each track's slope comes from a robust fit
    (:func:`track_slopes`: the Landau tail and wires that lost charge do not pull it), and the
    slopes are averaged with :func:`combine_slopes`, whose variance includes the scatter of
    the tracks beyond their own errors: the uncertainty is that of the tracks, not of hits
    taken as independent.

    Args:
        track: ``(n,)`` track key of each charge (any sortable values).
        t_ms: ``(n,)`` drift time [ms].
        charge: ``(n,)`` charge [ADC x tick]; values ``<= 0`` are dropped.
        n_iter: robust iterations of each kind in the per-track fits.

    Returns:
        a :class:`LifetimeFit`; NaN values when fewer than :data:`MIN_FIT_TRACKS` tracks
        constrain a slope.
    """
    keep = np.asarray(charge) > 0
    _, groups = np.unique(np.asarray(track)[keep], return_inverse=True)
    t = np.asarray(t_ms, dtype=np.float64)[keep]
    y = np.log(np.asarray(charge, dtype=np.float64)[keep])
    n_groups = int(groups.max()) + 1 if groups.size else 0
    slope, var = track_slopes(groups, n_groups, t, y, n_iter=n_iter)
    ok = np.isfinite(var)
    if np.count_nonzero(ok) < MIN_FIT_TRACKS:
        nan = float("nan")
        return LifetimeFit(nan, nan, nan, nan, int(np.count_nonzero(ok)), int(t.size))
    b, b_var, used = combine_slopes(slope[ok], var[ok])
    b_err = float(np.sqrt(b_var))
    if b < 0:
        tau, tau_err = -1.0 / b, b_err / b**2
    else:
        tau, tau_err = float("inf"), float("inf")
    return LifetimeFit(tau, tau_err, b, b_err, used, int(t.size))


# --------------------------------------------------------------------------------------------
# Streaming over the file


@dataclass
class _ApaRows:
    """Collection rows of one APA and, per fiber, where they sit in the APA's array."""

    tpc: int
    wires: np.ndarray  # (n,) wire of each row of the APA's collection array
    fiber_slots: dict[int, tuple[np.ndarray, np.ndarray]]  # fiber -> (rows in block, slots)


def _collection_layout(geo: Geometry) -> dict[int, _ApaRows]:
    layout: dict[int, _ApaRows] = {}
    for apa in geo.apas:
        rows = geo.rows_where(apa=int(apa), plane=COLLECTION)
        if rows.size == 0:
            continue
        rows = rows[np.argsort(geo.wire[rows], kind="stable")]
        slot_of_row = {int(r): s for s, r in enumerate(rows)}
        slots: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for fiber in np.unique(geo.fiber[rows]):
            fiber_rows = np.arange(geo.n_channels)[geo.rows_of_fiber(int(fiber))]
            local = np.flatnonzero(geo.plane[fiber_rows] == COLLECTION)
            slots[int(fiber)] = (local, np.array([slot_of_row[int(r)] for r in fiber_rows[local]]))
        layout[int(apa)] = _ApaRows(int(geo.tpc[rows[0]]), geo.wire[rows], slots)
    return layout


def _prepared_apas(raw: RawFile, i: int, layout: dict[int, _ApaRows]):
    """Yield ``(apa, waveforms, dead)`` for event ``i``, each APA once its fibers are read.

    ``waveforms`` is the ``float32`` ``(n_wires, ticks)`` prepared collection plane of the APA
    in wire order, ``dead`` a bool ``(n_wires,)``. Only one APA is held at a time when the
    file stores fibers APA by APA.
    """
    apa_of_fiber = {f: apa for apa, lay in layout.items() for f in lay.fiber_slots}
    pending = {apa: set(lay.fiber_slots) for apa, lay in layout.items()}
    buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for fiber, _rows, block in raw.iter_fibers(i):
        apa = apa_of_fiber.get(fiber)
        if apa is None:
            continue
        lay = layout[apa]
        if apa not in buffers:
            buffers[apa] = (
                np.zeros((lay.wires.size, raw.n_ticks), np.float32),
                np.zeros(lay.wires.size, bool),
            )
        local, slots = lay.fiber_slots[fiber]
        prep = dataprep.prepare_block(block[local], np.full(local.size, COLLECTION))
        x, dead = buffers[apa]
        x[slots], dead[slots] = prep.waveforms, prep.dead
        pending[apa].discard(fiber)
        if not pending[apa]:
            yield apa, *buffers.pop(apa)


def _noise_after_prep(x: np.ndarray, dead: np.ndarray) -> np.ndarray:
    rms = dataprep.robust_rms_float(x, step=3)
    return np.where(dead, 0.0, rms)


def _event_tracks(raw: RawFile, i: int, layout: dict[int, _ApaRows], ticks_per_pitch: float):
    """Rows of the charge table for the tracks of event ``i``, and all its hits."""
    records, hit_records = [], []
    min_span = MIN_TRACK_SPAN_US / raw.tick_us
    for apa, x, dead in _prepared_apas(raw, i, layout):
        lay = layout[apa]
        rms = _noise_after_prep(x, dead)
        hits = find_hits(x, rms)
        wire = lay.wires[hits["row"]]
        width = np.maximum(hits["stop"] - hits["start"], 1)
        hit_records.append(
            pandas.DataFrame(
                {
                    "tpc": lay.tpc,
                    "charge": hits["charge"],
                    # Noise of a charge integrated over the hit's ticks [ADC x tick].
                    "noise": rms[hits["row"]] * np.sqrt(width),
                }
            )
        )
        tracks, label = find_tracks(
            wire, hits["tick"], ticks_per_pitch=ticks_per_pitch, min_span_ticks=min_span
        )
        charges = track_charges(x, lay.wires, ~dead, tracks, hits, label)
        for k, (tick, q) in enumerate(charges):
            records.append(
                pandas.DataFrame(
                    {
                        "tpc": lay.tpc,
                        "event": i,
                        "track": f"{i}/{apa}/{k}",
                        "tick": tick,
                        "t_drift_ms": tick * raw.tick_us * 1e-3,
                        "charge": q,
                    }
                )
            )
    return records, hit_records


# --------------------------------------------------------------------------------------------
# Products


def _iso_utc(timestamp_ns: int) -> str:
    return (
        datetime.fromtimestamp(timestamp_ns / 1e9, tz=UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def most_probable(values: np.ndarray, bins: int = 50) -> float:
    """The most probable value of a sample (Landau-like: a peak and a long tail).

    The peak of a histogram of the values up to their 95th percentile, refined as the
    weighted mean of the peak bin and its neighbours; NaN for fewer than 10 values.

    Args:
        values: 1-D ``numpy.ndarray`` of floats (hit charges [ADC x tick], say).

    Returns:
        The most probable value, in the unit of ``values``.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 10:
        return float("nan")
    counts, edges = np.histogram(values, bins=bins, range=(0.0, np.quantile(values, 0.95)))
    counts = np.convolve(counts, np.ones(3) / 3, mode="same")
    k = int(np.argmax(counts))
    lo, hi = max(k - 1, 0), min(k + 2, counts.size)
    centres = 0.5 * (edges[1:] + edges[:-1])
    weights = counts[lo:hi]
    return float(np.sum(centres[lo:hi] * weights) / max(np.sum(weights), 1e-12))


def signal_to_noise(hits: pandas.DataFrame) -> float:
    """Signal over noise of collection hits: the most probable hit charge over the median
    noise of a charge integrated over a hit's ticks (the channel's noise RMS [ADC] times the
    square root of the hit's width [ticks]); dimensionless, NaN without enough hits.

    Args:
        hits: one row per hit with ``charge`` and ``noise`` [ADC x tick].
    """
    if len(hits) < 10:
        return float("nan")
    noise = float(np.median(hits.noise.to_numpy()))
    return most_probable(hits.charge.to_numpy()) / noise if noise > 0 else float("nan")


def _fit_table(
    raw: RawFile,
    charges: pandas.DataFrame,
    tpcs: list[int],
    timestamp: str,
    hits: pandas.DataFrame | None = None,
):
    rows, fits = [], {}
    for tpc in tpcs:
        sub = charges[charges.tpc == tpc]
        fit = fit_lifetime(
            sub.track.to_numpy(),
            sub.t_drift_ms.to_numpy(),
            sub.charge.to_numpy(),
        )
        fits[tpc] = fit
        rows.append(
            {
                "run": raw.run,
                "tpc": tpc,
                "timestamp": timestamp,
                "lifetime_ms": fit.lifetime_ms,
                "error_ms": fit.error_ms,
                "count": fit.n_tracks,
                "signal_to_noise": (
                    signal_to_noise(hits[hits.tpc == tpc]) if hits is not None else float("nan")
                ),
            }
        )
    return pandas.DataFrame(rows), fits


def _histograms(raw, charges, hits, tpcs) -> dict[str, hist.Hist]:
    t_max = raw.n_ticks * raw.tick_us * 1e-3
    q_max = float(np.quantile(charges.charge, 0.99)) * 1.5 if len(charges) else 1000.0
    out = {}
    for tpc in tpcs:
        sub = charges[charges.tpc == tpc]
        h = hist.Hist(
            hist.axis.Regular(60, 0.0, t_max, name="t_drift", label="drift time [ms]"),
            hist.axis.Regular(100, 0.0, q_max, name="charge", label="charge [ADC x tick]"),
            storage=hist.storage.Double(),
            label=f"charge vs drift time, TPC {tpc}",
        )
        h.fill(sub.t_drift_ms.to_numpy(), sub.charge.to_numpy())
        out[f"tpc{tpc}/charge_vs_drift"] = h
        hq = hist.Hist(
            hist.axis.Regular(100, 0.0, q_max, name="charge", label="hit charge [ADC x tick]"),
            storage=hist.storage.Double(),
        )
        hq.fill(hits.charge[hits.tpc == tpc].to_numpy())
        out[f"tpc{tpc}/hit_charge"] = hq
    return out


def _figure(tpc: int, sub: pandas.DataFrame, fit: LifetimeFit, t_max: float):
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    ax.plot(sub.t_drift_ms, sub.charge, ".", ms=1.5, alpha=0.4, color="tab:blue")
    if len(sub):
        edges = np.linspace(0.0, t_max, 16)
        idx = np.digitize(sub.t_drift_ms, edges) - 1
        med = [np.median(sub.charge[idx == k]) if np.any(idx == k) else np.nan for k in range(15)]
        ax.plot(0.5 * (edges[1:] + edges[:-1]), med, "o", color="k", label="median per bin")
    if np.isfinite(fit.lifetime_ms):
        t = np.linspace(0.0, t_max, 100)
        q0 = np.median(sub.charge * np.exp(sub.t_drift_ms / fit.lifetime_ms))
        ax.plot(
            t,
            q0 * np.exp(-t / fit.lifetime_ms),
            color="tab:red",
            label=f"tau = {fit.lifetime_ms:.2f} +- {fit.error_ms:.2f} ms",
        )
    ax.set_xlabel("drift time [ms]")
    ax.set_ylabel("charge per wire [ADC x tick]")
    ax.set_title(f"TPC {tpc}: {fit.n_tracks} tracks", fontsize="medium")
    if len(sub):
        ax.set_ylim(0, float(np.quantile(sub.charge, 0.98)) * 1.2)
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no track", transform=ax.transAxes, ha="center")
    return fig


def analyse(
    raw: RawFile | str | os.PathLike[str], *, n_events: int | None = None, figures: bool = True
) -> PayloadResult:
    """Run the purity monitor on a raw file.

    Args:
        raw: an open :class:`~p3s.payloads.rawformat.RawFile`, or a path to open (and close).
        n_events: analyse the first ``n_events`` events only (default: all).
        figures: make the dQ vs drift-time figures.

    Returns:
        :class:`~p3s.payloads.products.PayloadResult` named ``"purity"``: table ``purity``
        (run, tpc, timestamp of the first event in ISO 8601 UTC, lifetime_ms, error_ms,
        count = tracks used, signal_to_noise = most probable collection hit charge over the
        noise of a hit's charge, see :func:`signal_to_noise`), table ``charges`` (one row per
        wire charge on a track), the same purity rows in the summary, histograms
        ``tpc{n}/charge_vs_drift`` and ``tpc{n}/hit_charge``, figures ``tpc{n}/dqdt``.
    """
    if not isinstance(raw, RawFile):
        with open_raw(raw) as opened:
            return analyse(opened, n_events=n_events, figures=figures)
    n = raw.n_events if n_events is None else min(int(n_events), raw.n_events)
    if n <= 0:
        raise ValueError(f"{raw.path}: no event to analyse (file has {raw.n_events})")
    layout = _collection_layout(raw.geometry)
    ticks_per_pitch = COLLECTION_PITCH_MM / (raw.drift_speed_mm_per_us * raw.tick_us)
    records, hit_records = [], []
    for i in range(n):
        rec, hrec = _event_tracks(raw, i, layout, ticks_per_pitch)
        records += rec
        hit_records += hrec
    columns = ["tpc", "event", "track", "tick", "t_drift_ms", "charge"]
    charges = (
        pandas.concat(records, ignore_index=True) if records else pandas.DataFrame(columns=columns)
    )
    hits = pandas.concat(hit_records, ignore_index=True)
    tpcs = sorted(lay.tpc for lay in layout.values())
    timestamp = _iso_utc(raw.event_meta(0)[0])
    table, fits = _fit_table(raw, charges, tpcs, timestamp, hits)
    t_max = raw.n_ticks * raw.tick_us * 1e-3
    figs = {}
    if figures:
        for tpc in tpcs:
            figs[f"tpc{tpc}/dqdt"] = _figure(tpc, charges[charges.tpc == tpc], fits[tpc], t_max)
    summary = {
        "n_events": n,
        "purity": table.to_dict(orient="records"),
        "n_tracks": int(charges.track.nunique()) if len(charges) else 0,
    }
    return PayloadResult(
        payload=PAYLOAD,
        run=raw.run,
        subrun=raw.subrun,
        summary=summary,
        histograms=_histograms(raw, charges, hits, tpcs),
        tables={"purity": table, "charges": charges},
        figures=figs,
    )
