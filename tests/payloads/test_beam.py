"""Beam instrumentation monitor: PID from TOF and Cherenkov, histograms, products."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot
from p3s.payloads.beam import (
    MASS_GEV,
    PID_LABELS,
    analyse,
    expected_tof_ns,
    identify_particles,
    pid_counts,
)
from p3s.payloads.rawformat import Geometry, RawWriter, open_raw, raw_filename
from p3s.payloads.simulate import load_truth, simulate_beam_particles, simulate_file

EXPECTED_LABEL = {"e": "e", "mu": "pi/mu", "pi": "pi/mu", "p": "p"}


def test_expected_tof_follows_relativity():
    # 1 GeV/c over 28.6 m: electrons at ~c, pions ~0.93 ns later, protons ~35 ns later.
    c_time = 28.6 / 0.299792458
    assert expected_tof_ns(1.0, MASS_GEV["e"]) == pytest.approx(c_time, abs=1e-3)
    assert expected_tof_ns(1.0, MASS_GEV["pi"]) - c_time == pytest.approx(0.93, abs=0.01)
    assert expected_tof_ns(1.0, MASS_GEV["p"]) == pytest.approx(130.8, abs=0.1)
    assert expected_tof_ns(np.array([1.0, 2.0]), MASS_GEV["p"]).shape == (2,)


@pytest.mark.parametrize(
    ("tof", "c0", "c1", "label"),
    [
        (95.4, 1, 1, "e"),
        (95.4, 1, 0, "e"),
        (96.3, 0, 1, "pi/mu"),
        (130.8, 0, 0, "p"),
        (96.3, 0, 0, "unknown"),  # light without Cherenkov light
        (130.8, 0, 1, "unknown"),  # clearly heavy with Cherenkov light
        (60.0, 1, 1, "unknown"),  # faster than light
        (170.0, 0, 0, "unknown"),  # slower than a proton
    ],
)
def test_identify_particles_truth_table(tof, c0, c1, label):
    assert identify_particles([tof], [c0], [c1], [1.0]).tolist() == [label]


@pytest.mark.parametrize("momentum", [1.0, 2.0])
def test_pid_efficiency_above_90_percent_on_simulated_particles(momentum):
    beam, species = simulate_beam_particles(np.random.default_rng(4), 4000, momentum_gev=momentum)
    labels = identify_particles(beam["tof_ns"], beam["ckov0"], beam["ckov1"], beam["momentum_gev"])
    for true in ("e", "pi", "p"):
        chosen = species == true
        assert chosen.sum() > 300
        efficiency = np.mean(labels[chosen] == EXPECTED_LABEL[true])
        assert efficiency > 0.9, f"{true} at {momentum} GeV/c: {efficiency:.3f}"
    purity = np.mean(
        [
            EXPECTED_LABEL[s] == lab
            for s, lab in zip(species, labels, strict=True)
            if lab != "unknown"
        ]
    )  # noqa: E501
    assert purity > 0.95


def test_analyse_simulated_file_agrees_with_truth(tmp_path):
    path = tmp_path / raw_filename(20, 2)
    simulate_file(
        path, run=20, subrun=2, n_events=150, n_ticks=20, geometry=Geometry.reduced(1, 1),
        pds=False, seed=8,
    )  # fmt: skip
    truth = load_truth(path)
    with open_raw(path) as raw:
        result = analyse(raw)
    summary = result.summary
    assert (result.payload, result.run, result.subrun) == ("beam", 20, 2)
    assert summary["n_events"] == 150
    assert summary["n_beam_triggers"] == int(np.sum(truth.trigger == 1)) > 40
    assert summary["n_particles"] == truth.beam_species.size
    table = result.tables["particles"]
    assert table["event"].tolist() == truth.beam_event.tolist()
    expected = np.array([EXPECTED_LABEL[s] for s in truth.beam_species])
    assert np.mean(table["pid"].to_numpy() == expected) > 0.9
    assert sum(summary["pid_counts"].values()) == summary["n_particles"]
    assert summary["momentum_mean_gev"] == pytest.approx(1.0, abs=0.02)
    assert summary["beam_x_mean_mm"] == pytest.approx(-3.0, abs=4.0)
    assert result.histograms["momentum"].sum() == summary["n_particles"]
    assert result.histograms["ckov"].values().sum() == summary["n_particles"]
    pid_hist = result.histograms["pid"]
    assert [pid_hist[label] for label in PID_LABELS] == list(summary["pid_counts"].values())


def test_analyse_respects_n_events(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    simulate_file(path, n_events=30, n_ticks=20, geometry=Geometry.reduced(1, 1), seed=1)
    truth = load_truth(path)
    with open_raw(path) as raw:
        summary = analyse(raw, n_events=10).summary
    assert summary["n_events"] == 10
    assert summary["n_particles"] == int(np.sum(truth.beam_event < 10))


def test_analyse_products_write_and_read_back(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    simulate_file(path, n_events=20, n_ticks=20, geometry=Geometry.reduced(1, 1), seed=2)
    with open_raw(path) as raw:
        result = analyse(raw)
    tof_values = result.histograms["tof"].values().copy()
    written = {p.name for p in result.write(tmp_path / "out")}
    assert {"beam.root", "summary.json", "particles.csv", "momentum_tof.png"} <= written
    assert {"profile.png", "pid.png"} <= written
    with uproot.open(tmp_path / "out" / "beam.root") as root:
        np.testing.assert_array_equal(root["tof"].values(), tof_values)
        assert root["pid"].axis().labels() == list(PID_LABELS)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["summary"]["n_particles"] == result.summary["n_particles"]


def test_file_without_beam_data_gives_zero_counts(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    geo = Geometry.reduced(1, 1, pds_per_apa=0)
    with RawWriter(path, run=1, subrun=1, geometry=geo, n_ticks=10) as writer:
        writer.add_event(np.zeros((128, 10), np.uint16), timestamp_ns=1, trigger=0)
    with open_raw(path) as raw:
        result = analyse(raw)
    assert result.summary["n_particles"] == 0
    assert result.summary["pid_counts"] == dict.fromkeys(PID_LABELS, 0)
    paths = result.write(tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["summary"]["momentum_mean_gev"] is None  # NaN is written as null
    assert len(paths) == 6


def test_pid_counts_lists_every_label():
    assert pid_counts(np.array(["e", "p", "p"])) == {"e": 1, "pi/mu": 0, "p": 2, "unknown": 0}
