"""Tests of payloads.purity: hits, tracks, charge along tracks, lifetime fit, the payload."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
import scipy.stats
from p3s.payloads import purity
from p3s.payloads.rawformat import open_raw


def _pulse_block(rows=60, ticks=3000, sigma=2.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0.0, noise, (rows, ticks)).astype(np.float32)
        if noise
        else np.zeros((rows, ticks), np.float32)
    )


def _add_pulse(x, row, tick, charge, sigma=2.0):
    t = np.arange(x.shape[1])
    x[row] += charge / (np.sqrt(2 * np.pi) * sigma) * np.exp(-0.5 * ((t - tick) / sigma) ** 2)


def test_find_hits_measures_charge_and_tick():
    x = _pulse_block()
    _add_pulse(x, 3, 1000.0, 500.0)
    _add_pulse(x, 3, 2000.0, 300.0)
    _add_pulse(x, 10, 50.3, 800.0)
    hits = purity.find_hits(x, np.ones(60), n_sigma=5.0)
    assert hits["row"].tolist() == [3, 3, 10]
    assert np.allclose(hits["tick"], [1000.0, 2000.0, 50.3], atol=0.05)
    # the run above 5 ADC holds most, not all, of each pulse's charge
    assert np.all(hits["charge"] > [0.9 * 500, 0.9 * 300, 0.9 * 800])
    assert np.all(hits["charge"] <= [500, 300, 800])
    assert np.all(hits["start"] < hits["stop"])


def test_find_hits_ignores_rows_without_noise_estimate():
    x = _pulse_block(rows=2)
    _add_pulse(x, 0, 100, 500)
    _add_pulse(x, 1, 100, 500)
    hits = purity.find_hits(x, np.array([1.0, 0.0]))
    assert hits["row"].tolist() == [0]


def _line_hits(rng, lines, noise_hits=30, wires=200):
    wire, tick, truth = [], [], []
    for k, (a, m, w0, w1) in enumerate(lines):
        w = np.arange(w0, w1)
        wire.append(w)
        tick.append(a + m * w + rng.normal(0, 0.5, w.size))
        truth.append(np.full(w.size, k))
    wire.append(rng.integers(0, wires, noise_hits))
    tick.append(rng.uniform(0, 6000, noise_hits))
    truth.append(np.full(noise_hits, -1))
    return np.concatenate(wire), np.concatenate(tick), np.concatenate(truth)


def test_find_tracks_separates_close_parallel_tracks():
    rng = np.random.default_rng(1)
    lines = [(5500.0, -60.0, 5, 85), (5800.0, -60.0, 10, 90), (3500.0, -2.0, 0, 150)]
    wire, tick, truth = _line_hits(rng, lines)
    tracks, label = purity.find_tracks(wire, tick, ticks_per_pitch=6.0, min_span_ticks=200)
    assert len(tracks) == 3
    for trk in tracks:
        k = int(np.argmin([abs(trk.intercept - a) + 50 * abs(trk.slope - m) for a, m, *_ in lines]))
        a, m, w0, w1 = lines[k]
        assert trk.slope == pytest.approx(m, abs=0.1)
        assert trk.intercept == pytest.approx(a, abs=10)
        assert abs(trk.wire_lo - w0) <= 1 and abs(trk.wire_hi - (w1 - 1)) <= 1
    on_tracks = label >= 0
    assert np.mean(truth[on_tracks] >= 0) > 0.99
    assert np.mean(on_tracks[truth >= 0]) > 0.97


def test_find_tracks_applies_hit_and_span_cuts():
    rng = np.random.default_rng(2)
    wire, tick, _ = _line_hits(rng, [(1000.0, 1.0, 0, 15), (1000.0, 0.5, 50, 150)], 0)
    tracks, _ = purity.find_tracks(wire, tick, ticks_per_pitch=6.0, min_span_ticks=100)
    assert tracks == []  # 15 hits < 20, and 50 ticks of span < 100
    tracks, _ = purity.find_tracks(wire, tick, ticks_per_pitch=6.0, min_span_ticks=40)
    assert len(tracks) == 1 and tracks[0].n_hits == 100


def test_track_charges_integrate_along_the_line_and_skip_bad_wires():
    x = _pulse_block(rows=60, ticks=3000)
    wires = np.arange(100, 160)
    trk = purity.Track(
        intercept=-800.0, slope=20.0, wire_lo=100, wire_hi=159, n_hits=60, span_ticks=1180.0
    )
    for r, w in enumerate(wires):
        _add_pulse(x, r, float(trk.tick_at(w)), 400.0)
    good = np.ones(60, bool)
    good[30] = False  # dead
    # a foreign hit on wire 140 (row 40), inside the track's window
    _add_pulse(x, 40, float(trk.tick_at(140)) + 6, 300.0)
    hits = purity.find_hits(x, np.ones(60), n_sigma=3.0)
    label = np.zeros(hits["row"].size, np.int64)
    label[(hits["row"] == 40)] = -1
    ((tick, q),) = purity.track_charges(x, wires, good, [trk], hits, label)
    used = np.rint((tick + 800.0) / 20.0).astype(int)
    assert used.min() == 100 + purity.END_WIRES and used.max() == 159 - purity.END_WIRES
    assert 130 not in used and 140 not in used
    assert np.allclose(q, 400.0, rtol=0.01)


def test_track_charges_skip_windows_shared_by_two_tracks():
    x = _pulse_block(rows=40, ticks=2000)
    wires = np.arange(40)
    a = purity.Track(100.0, 10.0, 0, 39, 40, 390.0)
    b = purity.Track(490.0, -10.0, 0, 39, 40, 390.0)  # crosses a near wire 19.5
    (_, qa), (_, qb) = purity.track_charges(x, wires, np.ones(40, bool), [a, b])
    assert qa.size < 36 and qb.size < 36


def _synthetic_tracks(rng, tau_ms, n_tracks=20, scale=0.1, noise=20.0):
    """Charges per wire along tracks: multiplicative Landau-like fluctuation (mean of 10
    Moyal segments), per-track normalisation, additive noise, a few lost wires."""
    track, t, q = [], [], []
    for k in range(n_tracks):
        n = int(rng.integers(30, 90))
        t0, span = rng.uniform(0.0, 1.0), rng.uniform(0.5, 2.0)
        tt = t0 + np.sort(rng.uniform(0.0, span, n))
        landau = scipy.stats.moyal.rvs(1.0, scale, size=(n, 10), random_state=rng).mean(axis=1)
        qq = rng.uniform(2000, 8000) * np.exp(-tt / tau_ms) * landau + rng.normal(0, noise, n)
        qq[rng.random(n) < 0.02] *= 0.2
        track += [k] * n
        t.append(tt)
        q.append(qq)
    return np.array(track), np.concatenate(t), np.concatenate(q)


def test_fit_lifetime_recovers_tau_with_honest_errors():
    rng = np.random.default_rng(3)
    pulls = []
    for tau in np.geomspace(1.5, 10.0, 40):
        fit = purity.fit_lifetime(*_synthetic_tracks(rng, tau))
        assert fit.n_tracks >= 18
        pulls.append((fit.lifetime_ms - tau) / fit.error_ms)
    pulls = np.array(pulls)
    assert np.mean(np.abs(pulls) < 2) >= 0.9
    assert 0.75 < np.std(pulls) < 1.3
    assert abs(np.mean(pulls)) < 0.5


def test_fit_lifetime_needs_enough_tracks():
    rng = np.random.default_rng(4)
    track, t, q = _synthetic_tracks(rng, 3.0, n_tracks=2)
    fit = purity.fit_lifetime(track, t, q)
    assert math.isnan(fit.lifetime_ms) and math.isnan(fit.error_ms)


def test_fit_lifetime_reports_infinite_lifetime_for_rising_charge():
    rng = np.random.default_rng(5)
    track, t, q = _synthetic_tracks(rng, 3.0)
    fit = purity.fit_lifetime(track, t, q * np.exp(2 * t / 3.0))
    assert fit.slope_per_ms > 0 and math.isinf(fit.lifetime_ms)


def test_analyse_simulated_file(simulated, tmp_path):
    path, truth = simulated
    result = purity.analyse(path)
    assert result.payload == "purity"
    table = result.tables["purity"]
    assert list(table.columns) == [
        "run",
        "tpc",
        "timestamp",
        "lifetime_ms",
        "error_ms",
        "count",
        "signal_to_noise",
    ]
    (row,) = table.itertuples()
    assert (row.run, row.tpc) == (4649, 1)
    with open_raw(path) as raw:
        first_ns = raw.event_meta(0)[0]
    expected = datetime.fromtimestamp(first_ns / 1e9, tz=UTC).isoformat(timespec="seconds")
    assert row.timestamp == expected.replace("+00:00", "Z")
    assert row.count >= 3
    # 2000 ticks hold only 1 ms of drift: a loose check here, the sweep is in test_physics
    assert abs(row.lifetime_ms - truth.lifetimes_ms[1]) < 5 * row.error_ms
    assert result.summary["purity"][0]["tpc"] == 1
    assert {"tpc1/charge_vs_drift", "tpc1/hit_charge"} <= set(result.histograms)
    assert result.histograms["tpc1/charge_vs_drift"].sum() == len(result.tables["charges"])
    names = {p.name for p in result.write(tmp_path)}
    assert {"purity.root", "purity.csv", "tpc1_dqdt.png", "summary.json"} <= names


def test_most_probable_value_of_a_landau_like_sample_is_its_peak() -> None:
    import scipy.stats
    from p3s.payloads.purity import most_probable

    sample = scipy.stats.moyal.rvs(loc=250.0, scale=20.0, size=20000, random_state=3)
    assert abs(most_probable(sample) - 250.0) < 10.0
    assert math.isnan(most_probable(sample[:5]))
