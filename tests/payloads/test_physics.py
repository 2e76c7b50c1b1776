"""Physics acceptance checks of the TPC payloads on simulated data.

One sweep of simulated files (6 APAs of 2 fibers each, the full 6000-tick readout, 5 events)
is analysed by the purity and TPC monitors; each APA is a TPC with its own injected
lifetime, from 1.5 to 10 ms. The payloads see the waveforms only; these tests compare their
results with ``/truth``:

* lifetime: within 2 sigma of the truth in >= 90% of TPC-runs, pull width in [0.8, 1.25];
* dead and noisy channels: recall >= 0.99, false-positive rate < 0.1%;
* coherent-noise lines: every injected line is a peak of its fiber's profiled FFT, and no
  fiber without lines shows one.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from p3s.payloads import purity, tpc_monitor
from p3s.payloads.rawformat import Geometry, raw_filename
from p3s.payloads.simulate import simulate_file

N_FILES = 16
N_EVENTS = 5
GEOMETRY = Geometry.reduced(6, 2, pds_per_apa=0)
TPCS = [int(t) for t in GEOMETRY.tpcs]
LINE_TOLERANCE_KHZ = 1.0
SEED = 20240611

pytestmark = pytest.mark.slow


def _simulate_and_analyse(path: Path, run: int, seed: int, lifetimes_ms: dict) -> dict:
    """One file of the sweep: simulate it, then run both payloads on it."""
    truth = simulate_file(
        path,
        run=run,
        subrun=1,
        n_events=N_EVENTS,
        geometry=GEOMETRY,
        seed=seed,
        lifetimes_ms=lifetimes_ms,
        beam=False,
        pds=False,
    )
    return {
        "truth": truth,
        "purity": purity.analyse(path, figures=False),
        "tpc": tpc_monitor.analyse(path, figures=False),
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Simulate the sweep and run both payloads on every file, one file per core (files are
    independent; spawned processes: this pytest process runs server threads)."""
    rng = np.random.default_rng(SEED)
    lifetimes = np.geomspace(1.5, 10.0, N_FILES * len(TPCS))
    rng.shuffle(lifetimes)
    folder = tmp_path_factory.mktemp("sweep")
    jobs = [
        (
            folder / raw_filename(500 + f, 1),
            500 + f,
            SEED + f,
            dict(zip(TPCS, lifetimes[f * len(TPCS) : (f + 1) * len(TPCS)], strict=True)),
        )
        for f in range(N_FILES)
    ]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        return list(pool.map(_simulate_and_analyse, *zip(*jobs, strict=True)))


def _lifetimes(sweep):
    rows = []
    for run in sweep:
        for row in run["purity"].tables["purity"].itertuples():
            rows.append((run["truth"].lifetimes_ms[row.tpc], row.lifetime_ms, row.error_ms))
    return np.array(rows)


def test_lifetime_within_two_sigma_in_90_percent_of_tpc_runs(sweep):
    truth, fit, err = _lifetimes(sweep).T
    assert truth.size == N_FILES * len(TPCS) >= 30
    assert np.all(np.isfinite(fit)) and np.all(err > 0)
    coverage = np.mean(np.abs(fit - truth) < 2 * err)
    print(f"lifetime: {coverage:.1%} of {truth.size} TPC-runs within 2 sigma")
    assert coverage >= 0.9


def test_lifetime_pulls_have_unit_width(sweep):
    truth, fit, err = _lifetimes(sweep).T
    pulls = (fit - truth) / err
    print(f"pulls: mean {pulls.mean():+.2f}, std {pulls.std(ddof=1):.2f}")
    assert 0.8 <= pulls.std(ddof=1) <= 1.25
    assert abs(pulls.mean()) < 0.5


def test_lifetime_uses_several_tracks_per_tpc(sweep):
    counts = [row.count for run in sweep for row in run["purity"].tables["purity"].itertuples()]
    assert min(counts) >= 5


def _channel_classes(sweep):
    tp = fn = fp = negatives = 0
    for run in sweep:
        summary, truth = run["tpc"].summary, run["truth"]
        found = set(summary["dead_channels"]) | set(summary["noisy_channels"])
        bad = set(truth.dead_channels.tolist()) | set(truth.noisy_channels.tolist())
        tp += len(found & bad)
        fn += len(bad - found)
        fp += len(found - bad)
        negatives += summary["n_channels"] - len(bad)
        # dead ones must be called dead and noisy ones noisy
        assert set(summary["dead_channels"]) & set(truth.noisy_channels.tolist()) == set()
    return tp, fn, fp, negatives


def test_dead_and_noisy_channels_recall_and_false_positive_rate(sweep):
    tp, fn, fp, negatives = _channel_classes(sweep)
    recall, fpr = tp / (tp + fn), fp / negatives
    print(f"bad channels: recall {recall:.3f} ({tp}/{tp + fn}), FPR {fpr:.2e} ({fp}/{negatives})")
    assert tp + fn >= 50
    assert recall >= 0.99
    assert fpr < 1e-3


def test_coherent_lines_appear_in_the_right_fibers_only(sweep):
    n_lines = n_clean = 0
    for run in sweep:
        found = run["tpc"].summary["coherent_lines_khz"]
        injected = run["truth"].coherent_lines
        for fiber in GEOMETRY.fibers.tolist():
            peaks = found.get(str(fiber), [])
            lines = injected.get(fiber, [])
            for f in lines:
                assert any(abs(p - f) < LINE_TOLERANCE_KHZ for p in peaks), (fiber, f, peaks)
            assert all(any(abs(p - f) < LINE_TOLERANCE_KHZ for f in lines) for p in peaks)
            n_lines += len(lines)
            n_clean += not lines
    assert n_lines >= 20 and n_clean >= 50
