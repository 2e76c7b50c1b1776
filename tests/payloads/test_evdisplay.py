"""Tests of payloads.evdisplay: time pooling, per-plane images, the payload's products."""

from __future__ import annotations

import numpy as np
import pytest
from p3s.payloads import evdisplay
from p3s.payloads.rawformat import Geometry, RawWriter, open_raw, raw_filename

GEOMETRY = Geometry.reduced(2, 1, pds_per_apa=0)
N_TICKS = 600
PULSE_WIRE, PULSE_TICK = 10, 300


def test_pool_ticks_keeps_the_largest_magnitude_of_each_group():
    x = np.zeros((2, 10), np.float32)
    x[0, 3] = 5.0
    x[0, 4] = -7.0
    x[1, 9] = 2.0
    pooled, k = evdisplay.pool_ticks(x, 4)
    assert k == 3 and pooled.shape == (2, 4)
    assert pooled[0].tolist() == [0.0, -7.0, 0.0, 0.0]
    assert pooled[1].tolist() == [0.0, 0.0, 0.0, 2.0]  # last group pools one tick
    same, k1 = evdisplay.pool_ticks(x, 100)
    assert k1 == 1 and np.array_equal(same, x)


def test_pool_ticks_keeps_both_lobes_of_a_bipolar_pulse():
    t = np.arange(6000)
    x = 30 * np.exp(-0.5 * ((t - 2000) / 3) ** 2) - 30 * np.exp(-0.5 * ((t - 2012) / 3) ** 2)
    pooled, _ = evdisplay.pool_ticks(x[None, :], 500)
    assert pooled.max() > 25 and pooled.min() < -25


def _write(path, n_events=2):
    rng = np.random.default_rng(0)
    geo = GEOMETRY
    ped = np.where(geo.plane == 2, 900.0, 2350.0) + rng.normal(0, 20, geo.n_channels)
    t = np.arange(N_TICKS)
    with RawWriter(path, run=3, subrun=4, geometry=geo, n_ticks=N_TICKS) as w:
        for event in range(n_events):
            x = ped[:, None] + rng.normal(0, 3, (geo.n_channels, N_TICKS))
            x += 8 * np.sin(2 * np.pi * t / 40.0 + event)  # coherent on every channel
            row = np.flatnonzero((geo.apa == 1) & (geo.plane == 2) & (geo.wire == PULSE_WIRE))
            x[row] += 120 * np.exp(-0.5 * ((t - PULSE_TICK) / 2.0) ** 2)
            x[geo.rows_where(apa=0, plane=0)[5]] = 0.0  # dead
            w.add_event(np.rint(x).astype(np.uint16), timestamp_ns=event, trigger=0)
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("evd") / raw_filename(3, 4))


def test_apa_images_prepare_every_plane(small_file):
    with open_raw(small_file) as raw:
        images = list(evdisplay.apa_images(raw, 0))
    assert [(im.apa, im.plane) for im in images] == [(a, p) for a in (0, 1) for p in (0, 1, 2)]
    for im in images:
        assert np.all(np.diff(im.wires) > 0)
        assert im.raw.shape == im.prepared.shape == (im.wires.size, N_TICKS)
    u0 = images[0]
    assert u0.dead.tolist().count(True) == 1 and u0.dead[5]
    x1 = images[5]
    # raw: pedestal spread and coherent noise; prepared: white noise of 3 ADC only
    assert np.std(x1.raw[:, :200]) > 15
    quiet = np.delete(x1.prepared, PULSE_WIRE - x1.wires[0], axis=0)
    assert np.std(quiet) == pytest.approx(3.0, rel=0.15)
    pulse_row = x1.prepared[PULSE_WIRE - x1.wires[0]]
    assert pulse_row.argmax() == PULSE_TICK and pulse_row.max() > 100


def test_analyse_makes_raw_and_prepared_images(small_file, tmp_path):
    result = evdisplay.analyse(small_file, n_events=5, histograms=True)
    assert result.payload == "evdisplay" and (result.run, result.subrun) == (3, 4)
    assert result.summary["n_events"] == 2  # the file has two
    names = [im["name"] for im in result.summary["images"]]
    assert len(names) == 2 * 2 * 3 * 2
    assert "evt000001/apa1/plane2_prepared" in names and "evt000000/apa0/plane0_raw" in names
    occupancy = {n.replace("_raw", "_occupancy") for n in names if n.endswith("_raw")}
    assert set(result.figures) == set(names)
    assert set(result.histograms) == set(names) | occupancy
    occ = result.histograms["evt000000/apa1/plane2_occupancy"].values()
    assert occ.argmax() == PULSE_WIRE and occ[PULSE_WIRE] >= 5
    assert np.delete(occ, PULSE_WIRE).sum() < 5  # 5 sigma: hardly any noise sample
    h = result.histograms["evt000000/apa1/plane2_prepared"]
    assert h.values().shape == (48, N_TICKS // 2)  # 500 time bins at most: 2 ticks per bin
    assert h.axes[1].edges[-1] == pytest.approx(N_TICKS * 0.5)
    entry = next(
        im for im in result.summary["images"] if im["name"].endswith("apa1/plane2_prepared")
    )
    assert entry["max_adc"] > 100 and entry["plane"] == "X" and entry["wires"] == [0, 47]
    paths = result.write(tmp_path)
    assert (tmp_path / "evt000000_apa1_plane2_prepared.png").exists()
    assert {"evdisplay.root", "summary.json"} <= {p.name for p in paths}


def test_analyse_pools_time_and_skips_histograms_by_default(small_file):
    result = evdisplay.analyse(small_file, n_events=1, time_bins=100)
    assert all(name.endswith("_occupancy") for name in result.histograms)
    assert result.summary["time_bins"] == 100
    assert len(result.figures) == 12
    image = result.figures["evt000000/apa1/plane2_prepared"].axes[0].images[0]
    assert image.get_array().shape == (100, 48)
    result.close_figures()
    with pytest.raises(ValueError, match="no event"):
        evdisplay.analyse(small_file, n_events=0)
