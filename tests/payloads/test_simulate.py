"""The simulator writes valid files whose measurable quantities match its truth."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from p3s.payloads.rawformat import Geometry, open_raw, parse_filename, raw_filename
from p3s.payloads.simulate import load_truth, simulate_file
from typer.testing import CliRunner

from p3s.cli.simulate import parse_lifetimes, register

from .conftest import SIM_GEOMETRY, SIM_TICKS


def _robust_rms(adc: np.ndarray) -> np.ndarray:
    """Per-row RMS of the samples within 4 (IQR-estimated) sigma of the median: the track
    pulses are excluded, and integer ADC values do not quantise the result."""
    x = adc.astype(np.float64)
    median = np.median(x, axis=1, keepdims=True)
    q25, q75 = np.percentile(x, [25, 75], axis=1, keepdims=True)
    keep = np.abs(x - median) <= 4 * np.maximum((q75 - q25) / 1.349, 0.5)
    deviation = np.where(keep, x - median, 0.0)
    return np.sqrt((deviation**2).sum(axis=1) / np.maximum(keep.sum(axis=1), 1))


def test_simulated_file_is_valid_and_truth_round_trips(simulated):
    path, truth = simulated
    with open_raw(path) as raw:
        raw.verify_readable()
        assert (raw.run, raw.subrun, raw.n_events, raw.n_ticks) == (4649, 3, 4, SIM_TICKS)
        assert np.array_equal(raw.geometry.channel, SIM_GEOMETRY.channel)
        triggers = [raw.event_meta(i)[1] for i in range(raw.n_events)]
        stamps = [raw.event_meta(i)[0] for i in range(raw.n_events)]
        beams = [raw.read_beam(i).size for i in range(raw.n_events)]
        pds = raw.read_pds(0)
    assert triggers == truth.trigger.tolist()
    assert beams == [int(t == 1) for t in triggers]
    assert stamps == sorted(stamps) and stamps[0] > 1_500_000_000 * 10**9
    assert pds.shape == (10, 1000) and abs(np.median(pds) - 1500) < 50
    loaded = load_truth(path)
    assert loaded.lifetimes_ms == {1: 3.0}
    assert np.array_equal(loaded.pedestal, truth.pedestal)
    assert np.array_equal(loaded.dead_channels, truth.dead_channels)
    assert loaded.coherent_lines == truth.coherent_lines
    assert loaded.beam_species.tolist() == truth.beam_species.tolist()


def test_measured_pedestals_match_truth(simulated):
    path, truth = simulated
    live = truth.noise_rms > 0
    with open_raw(path) as raw:
        median = np.median(raw.read_adc(2), axis=1)
    assert np.max(np.abs(median[live] - truth.pedestal[live])) < 1.5
    collection = SIM_GEOMETRY.plane == 2
    assert 800 < np.median(truth.pedestal[collection]) < 1000
    assert 2250 < np.median(truth.pedestal[~collection]) < 2450


def test_measured_noise_rms_matches_truth_without_coherent_noise(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    truth = simulate_file(path, n_events=1, n_ticks=2000, seed=5, coherent_lines={})
    with open_raw(path) as raw:
        rms = _robust_rms(raw.read_adc(0))
    live = truth.noise_rms > 0
    ratio = rms[live] / truth.noise_rms[live]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.percentile(ratio, 2) > 0.8 and np.percentile(ratio, 98) < 1.2
    normal = live & ~np.isin(truth.channel, truth.noisy_channels)
    assert np.all((truth.noise_rms[normal] >= 2.8) & (truth.noise_rms[normal] <= 5.0))


def test_dead_and_noisy_channels_look_the_part(tmp_path):
    geo = Geometry.reduced(1, 2)
    dead, noisy = [0, 1601, 810], [5, 1650]
    path = tmp_path / raw_filename(1, 1)
    truth = simulate_file(
        path, geometry=geo, n_events=1, n_ticks=1000, dead_channels=dead, noisy_channels=noisy
    )
    assert sorted(truth.dead_channels.tolist()) == sorted(dead)
    assert sorted(truth.noisy_channels.tolist()) == sorted(noisy)
    with open_raw(path) as raw:
        adc = raw.read_adc(0)
    rms = _robust_rms(adc)
    for channel, zero in zip(truth.dead_channels, truth.dead_zero, strict=True):
        row = int(np.flatnonzero(geo.channel == channel)[0])
        assert adc[row].std() == 0
        assert adc[row, 0] == (0 if zero else round(truth.pedestal[row]))
    typical = np.median(rms)
    for channel in noisy:
        assert rms[np.flatnonzero(geo.channel == channel)[0]] > 3 * typical


def test_random_bad_channels_are_about_half_a_percent(simulated):
    _, truth = simulated
    assert len(truth.dead_channels) == len(truth.noisy_channels) == round(0.005 * 512)
    assert not set(truth.dead_channels) & set(truth.noisy_channels)


def test_unknown_bad_channel_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"dead channels \[99999\] are not in the geometry"):
        simulate_file(tmp_path / "x.h5", n_ticks=100, dead_channels=[99999])


def test_coherent_line_is_seen_in_the_fiber_average(tmp_path):
    path = tmp_path / raw_filename(1, 1)
    geo = Geometry.reduced(1, 2)
    truth = simulate_file(
        path, geometry=geo, n_events=1, n_ticks=2000, coherent_lines={1: [125.0]}, seed=3
    )
    assert truth.coherent_lines == {1: [125.0]}
    freqs = np.fft.rfftfreq(2000, d=0.5e-6) / 1e3  # kHz
    with open_raw(path) as raw:
        spectra = {}
        for fiber, _rows, block in raw.iter_fibers(0):
            mean = (block - np.median(block, axis=1, keepdims=True)).mean(axis=0)
            spectra[fiber] = np.abs(np.fft.rfft(mean))
    assert freqs[np.argmax(spectra[1][1:]) + 1] == pytest.approx(125.0, abs=0.5)
    line = np.argmin(np.abs(freqs - 125.0))
    assert spectra[1][line] > 10 * spectra[0][line]


def test_charge_is_attenuated_with_the_electron_lifetime(tmp_path):
    # Same seed: identical tracks and noise; only the attenuation differs. A 0.1 us lifetime
    # removes all charge and leaves the noise, which is then subtracted from the other two.
    geo = Geometry.reduced(1, 2)
    kwargs = dict(n_events=2, n_ticks=6000, seed=2, geometry=geo)
    tau_ms = {"short": 1.5, "long": 1e6, "none": 1e-4}
    truths = {name: simulate_file(tmp_path / f"{name}.h5", lifetimes_ms=tau, **kwargs)
              for name, tau in tau_ms.items()}  # fmt: skip
    pedestal = truths["short"].pedestal
    rows = np.flatnonzero((geo.plane == 2) & (truths["short"].noise_rms > 0))
    per_tick = {}
    for name in tau_ms:
        with open_raw(tmp_path / f"{name}.h5") as raw:
            per_tick[name] = sum(
                (raw.read_adc(i, rows) - pedestal[rows, None]).sum(axis=0)
                for i in range(raw.n_events)
            )
    signal_long = per_tick["long"] - per_tick["none"]
    signal_short = per_tick["short"] - per_tick["none"]
    ticks = np.arange(6000)
    for lo in (500, 2500, 4500):  # drift times 0.25, 1.25 and 2.25 ms
        window = slice(lo, lo + 1000)
        assert signal_long[window].sum() > 1e5  # tracks cross every window
        weights = signal_long[window] / signal_long[window].sum()
        expected = np.sum(weights * np.exp(-ticks[window] * 0.5 / 1500.0))
        measured = signal_short[window].sum() / signal_long[window].sum()
        assert measured == pytest.approx(expected, rel=0.03)


def test_collection_pulses_are_well_above_noise(simulated):
    path, truth = simulated
    rows = np.flatnonzero((SIM_GEOMETRY.plane == 2) & (truth.noise_rms > 0))
    with open_raw(path) as raw:
        adc = raw.read_adc(0, rows).astype(np.float64)
    peaks = (adc - truth.pedestal[rows, None])[:, :200].max(axis=1)  # near the anode
    hit = peaks > 30
    assert hit.sum() >= 5
    assert 60 < np.median(peaks[hit]) < 300


def test_same_seed_gives_same_data(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    simulate_file(a, n_events=2, n_ticks=300, seed=9)
    simulate_file(b, n_events=2, n_ticks=300, seed=9)
    with open_raw(a) as ra, open_raw(b) as rb:
        for i in range(2):
            assert np.array_equal(ra.read_adc(i), rb.read_adc(i))
            assert np.array_equal(ra.read_beam(i), rb.read_beam(i))


def test_per_tpc_lifetimes_need_every_tpc(tmp_path):
    geo = Geometry.reduced(2, 1)
    with pytest.raises(ValueError, match=r"no lifetime for TPC\(s\) \[2\]"):
        simulate_file(tmp_path / "x.h5", geometry=geo, n_ticks=100, lifetimes_ms={1: 3.0})
    truth = simulate_file(
        tmp_path / "y.h5", geometry=geo, n_ticks=100, n_events=1, lifetimes_ms={1: 3.0, 2: 8.0}
    )
    assert truth.lifetimes_ms == {1: 3.0, 2: 8.0}


# --------------------------------------------------------------------------------------------
# CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep "simulate" a sub-command
        pass

    return app


def test_cli_writes_a_file_named_by_the_format_rule(tmp_path):
    result = CliRunner().invoke(
        _app(),
        ["simulate", str(tmp_path), "--run", "42", "--subrun", "7", "--events", "2",
         "--ticks", "300", "--lifetime", "2.5", "--seed", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    path = tmp_path / "np04_raw_run000042_0007_dl1.h5"
    assert str(path) in result.stdout
    assert parse_filename(path) == (42, 7, 1)
    with open_raw(path) as raw:
        assert (raw.n_events, raw.n_ticks, raw.geometry.n_channels) == (2, 300, 512)
    assert load_truth(path).lifetimes_ms == {1: 2.5}


def test_cli_full_geometry_with_per_tpc_lifetime(tmp_path):
    result = CliRunner().invoke(
        _app(),
        ["simulate", str(tmp_path), "--geometry", "full", "--apas", "2", "--events", "1",
         "--ticks", "100", "--lifetime", "2=7", "--lifetime", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    truth = load_truth(tmp_path / raw_filename(1, 1))
    assert truth.lifetimes_ms == {1: 4.0, 2: 7.0}
    assert truth.channel.size == 5120


def test_cli_refuses_unknown_tpc(tmp_path):
    result = CliRunner().invoke(_app(), ["simulate", str(tmp_path), "--lifetime", "3=1"])
    assert result.exit_code == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {1: 3.0, 2: 3.0}),
        (["5"], {1: 5.0, 2: 5.0}),
        (["2=1.5", "6"], {1: 6.0, 2: 1.5}),
    ],
)
def test_parse_lifetimes(values, expected):
    assert parse_lifetimes(values, [1, 2]) == expected


@pytest.mark.parametrize("bad", ["x", "1=y", "0", "1=-2"])
def test_parse_lifetimes_refuses_bad_values(bad):
    with pytest.raises(typer.BadParameter):
        parse_lifetimes([bad], [1, 2])
