"""Tests of payloads.tpc_monitor: spectra, persistent FFT, line finding, PDS, the payload."""

from __future__ import annotations

import json

import numpy as np
import pytest
from p3s.payloads import tpc_monitor
from p3s.payloads.rawformat import Geometry, RawWriter, open_raw, raw_filename
from p3s.payloads.simulate import load_truth

TICK_US = 0.5


def _white(rng, rows, ticks, sigma):
    return rng.normal(0.0, sigma, (rows, ticks))


def test_binning_groups_native_bins_into_about_500():
    b = tpc_monitor.SpectrumBinning.for_readout(6000, TICK_US)
    assert (b.n_freq, b.rebin, b.n_groups) == (3001, 6, 500)
    assert b.df_khz == pytest.approx(1000.0 / 3000.0)
    axis = b.frequency_axis()
    assert axis.size == 500
    assert axis.edges[-1] == pytest.approx(2999.5 * b.df_khz)
    small = tpc_monitor.SpectrumBinning.for_readout(200, TICK_US)
    assert small.rebin == 1 and small.n_groups == 100
    with pytest.raises(ValueError, match="n_ticks"):
        tpc_monitor.SpectrumBinning.for_readout(2, TICK_US)


def test_power_spectra_psd_integrates_to_the_variance():
    rng = np.random.default_rng(1)
    b = tpc_monitor.SpectrumBinning.for_readout(2000, TICK_US)
    adc = np.rint(1000 + _white(rng, 64, 2000, 4.0)).astype(np.uint16)
    ped = np.full(64, 1000.0, np.float32)
    power = tpc_monitor.power_spectra(adc, ped, b, np.empty((64, 2000), np.float32))
    assert power.dtype == np.float32 and power.shape == (64, 1001)
    psd = power * b.psd_scale  # ADC^2/Hz, one-sided
    variance = psd.sum(axis=1) * b.df_khz * 1e3
    assert np.allclose(variance, 16.0 + 1 / 12, rtol=0.1)
    # the pedestal is removed after the FFT: bins 0 and 1 hold noise only
    assert psd[:, :2].mean() < 5 * psd[:, 2:].mean()


def test_power_spectra_puts_a_sinusoid_in_its_bin():
    b = tpc_monitor.SpectrumBinning.for_readout(2000, TICK_US)
    t_us = np.arange(2000) * TICK_US
    wave = 2000 + 20 * np.sin(2 * np.pi * 0.1234 * t_us)  # 123.4 kHz
    adc = np.rint(np.tile(wave, (3, 1))).astype(np.uint16)
    power = tpc_monitor.power_spectra(adc, np.full(3, 2000.0), b, np.empty((3, 2000), np.float32))
    assert b.freq_khz[power[0].argmax()] == pytest.approx(123.4, abs=b.df_khz)


def test_persistent_counts_fill_every_channel_once_per_group():
    rng = np.random.default_rng(2)
    b = tpc_monitor.SpectrumBinning.for_readout(2000, TICK_US)
    adc = np.rint(1000 + _white(rng, 32, 2000, 4.0)).astype(np.uint16)
    power = tpc_monitor.power_spectra(adc, np.full(32, 1000.0), b, np.empty((32, 2000), np.float32))
    counts = tpc_monitor.persistent_counts(power, b)
    assert counts.shape == (b.n_groups, tpc_monitor.DB_BINS + 2)
    assert np.all(counts.sum(axis=1) == 32)
    # white noise of 4 ADC over 1 MHz: 16e-6 ADC^2/Hz = -48 dB; column k+1 is [k-100, k-99) dB
    peak_bin = counts[10:].sum(axis=0).argmax()
    assert -51 <= peak_bin - 101 <= -45


def test_group_power_of_the_interleaved_squares_equals_that_of_the_power():
    rng = np.random.default_rng(3)
    b = tpc_monitor.SpectrumBinning.for_readout(6000, TICK_US)
    adc = np.rint(900 + _white(rng, 8, 6000, 3.0)).astype(np.uint16)
    ped = np.full(8, 900.0, np.float32)
    parts = tpc_monitor.squared_parts(adc, ped, b, np.empty((8, 6000), np.float32))
    assert parts.shape == (8, 2 * b.n_freq)
    power = parts[:, 0::2] + parts[:, 1::2]
    expected = power[:, : b.n_groups * b.rebin].reshape(8, b.n_groups, b.rebin).sum(axis=2)
    assert np.allclose(tpc_monitor.group_power(parts, b), expected, rtol=1e-5)
    assert np.allclose(tpc_monitor.group_power(power, b), expected, rtol=1e-5)


def test_persistent_counts_send_zeros_to_the_underflow():
    b = tpc_monitor.SpectrumBinning.for_readout(200, TICK_US)
    counts = tpc_monitor.persistent_counts(np.zeros((4, b.n_freq), np.float32), b)
    assert counts[:, 0].sum() == 4 * b.n_groups


def _spectrum(rng, lines=(), n_freq=3001):
    freq = np.arange(n_freq) / 3.0
    psd = 1e-5 * (1 + 50 / np.maximum(freq, 1)) * rng.exponential(1.0, n_freq) ** 0.1
    for f, gain in lines:
        k = int(round(f * 3))
        psd[k - 1 : k + 2] *= gain
    return freq, psd


def test_find_lines_finds_peaks_above_background():
    rng = np.random.default_rng(3)
    freq, psd = _spectrum(rng, [(87.0, 300.0), (456.7, 100.0)])
    found = tpc_monitor.find_lines(freq, psd)
    assert [round(x["freq_khz"]) for x in found] == [87, 457]
    assert all(x["excess_db"] > 15 for x in found)


def test_find_lines_finds_nothing_in_smooth_noise_and_works_on_many_spectra():
    rng = np.random.default_rng(4)
    freq, clean = _spectrum(rng)
    _, lined = _spectrum(rng, [(200.0, 50.0)])
    assert tpc_monitor.find_lines(freq, clean) == []
    many = tpc_monitor.find_lines(freq, np.stack([clean, lined]))
    assert many[0] == [] and [round(x["freq_khz"]) for x in many[1]] == [200]


def test_pds_stats_counts_pulses_of_either_polarity():
    rng = np.random.default_rng(5)
    wave = 1500 + rng.normal(0, 2.0, (2, 2000))
    starts = [100, 500, 900, 1300, 1700]
    for s in starts:
        wave[0, s : s + 10] += 40.0
        wave[1, s : s + 10] -= 40.0
    stats = tpc_monitor.pds_stats(np.rint(wave).astype(np.uint16))
    assert stats["pulses"].tolist() == [5, 5]
    assert np.allclose(stats["baseline"], 1500, atol=0.5)
    assert np.allclose(stats["noise"], 2.0, rtol=0.15)


# ---- the payload on files ---------------------------------------------------------------------

GEOMETRY = Geometry.reduced(1, 2, pds_per_apa=4)
N_TICKS = 2000
DEAD, NOISY = (1605, 1690), (30, 1650)
LINE_FIBER, LINE_KHZ = 1, 150.0


def _write_synthetic(path, n_events=3, seed=0):
    """White noise per channel, one stuck and one zero channel, two noisy channels, a
    coherent 150 kHz line on fiber 1, PDS pulses."""
    rng = np.random.default_rng(seed)
    geo = GEOMETRY
    ped = np.where(geo.plane == 2, 900.0, 2350.0)
    sigma = np.where(geo.plane == 2, 3.0, 4.0) * rng.uniform(0.9, 1.1, geo.n_channels)
    sigma[np.isin(geo.channel, NOISY)] *= 5
    t_us = np.arange(N_TICKS) * TICK_US
    line_rows = geo.fiber == LINE_FIBER
    with RawWriter(path, run=7, subrun=2, geometry=geo, n_ticks=N_TICKS) as w:
        for event in range(n_events):
            x = ped[:, None] + rng.normal(0, 1, (geo.n_channels, N_TICKS)) * sigma[:, None]
            x[line_rows] += 3.0 * np.sin(2 * np.pi * LINE_KHZ * 1e-3 * t_us + event)
            x[geo.channel == DEAD[0]] = 900.0
            x[geo.channel == DEAD[1]] = 0.0
            pds = 1500 + rng.normal(0, 2.0, (geo.n_pds_channels, 1000))
            pds[:, 100:110] += 50.0
            w.add_event(
                np.rint(x).astype(np.uint16),
                timestamp_ns=1_538_352_000_000_000_000 + event,
                trigger=0,
                pds=np.rint(pds).astype(np.uint16),
            )
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpc") / raw_filename(7, 2)
    return _write_synthetic(path)


def test_analyse_finds_dead_noisy_channels_and_the_line(synthetic):
    result = tpc_monitor.analyse(synthetic)
    s = result.summary
    assert result.payload == "tpc_monitor" and (result.run, result.subrun) == (7, 2)
    assert s["n_events"] == 3 and s["n_channels"] == 256
    assert s["dead_channels"] == list(DEAD) and s["noisy_channels"] == list(NOISY)
    assert (s["n_dead"], s["n_noisy"]) == (2, 2)
    assert list(s["coherent_lines_khz"]) == [str(LINE_FIBER)]
    assert s["coherent_lines_khz"]["1"] == [pytest.approx(LINE_KHZ, abs=0.5)]
    channels = result.tables["channels"]
    quiet = channels[(channels.fiber == 0) & ~channels.dead & ~channels.noisy]
    assert quiet.rms[quiet.plane == 2].mean() == pytest.approx(3.0, rel=0.05)
    assert quiet.rms[quiet.plane == 0].mean() == pytest.approx(4.0, rel=0.05)
    live_x = channels.rms[(channels.plane == 2) & ~channels.dead]
    assert s["mean_rms"]["X"] == pytest.approx(live_x.mean())


def test_analyse_gives_the_same_products_with_and_without_read_ahead(synthetic):
    one = tpc_monitor.analyse(synthetic, figures=False, read_ahead=False)
    two = tpc_monitor.analyse(synthetic, figures=False, read_ahead=True)
    assert one.summary == two.summary
    assert one.tables["channels"].equals(two.tables["channels"])
    assert one.histograms.keys() == two.histograms.keys()
    for name, h in one.histograms.items():
        assert np.array_equal(h.view(flow=True), two.histograms[name].view(flow=True)), name


def test_analyse_tables_histograms_and_figures(synthetic):
    result = tpc_monitor.analyse(synthetic, n_events=2)
    channels = result.tables["channels"]
    assert len(channels) == 256 and result.summary["n_events"] == 2
    assert set(channels.columns) >= {"channel", "plane", "fiber", "pedestal", "rms", "dead"}
    x = channels[(channels.plane == 2) & ~channels.dead]
    assert np.allclose(x.pedestal, 900, atol=1.0)
    planes = result.tables["planes"]
    assert planes.n_channels.sum() == 256 and planes.n_dead.sum() == 2
    pds = result.tables["pds"]
    window_s = 1000 * tpc_monitor.PDS_SAMPLE_NS * 1e-9
    assert np.allclose(pds.pulse_rate_hz, 1 / window_s)
    persistent = result.histograms["apa0/fiber001/persistent_fft"]
    assert persistent.sum(flow=True) == 128 * 2 * persistent.axes[0].size
    profiled = result.histograms["apa0/fiber001/profiled_fft"]
    assert profiled.axes[0].size == N_TICKS // 2 + 1
    assert {"rms_vs_channel", "pedestal_vs_channel", "apa0/rms_planeX"} <= set(result.histograms)
    assert {"rms_vs_channel", "pedestal_vs_channel", "apa0/fiber001/fft"} <= set(result.figures)
    result.close_figures()


def test_analyse_result_writes_products(synthetic, tmp_path):
    with open_raw(synthetic) as raw:
        result = tpc_monitor.analyse(raw, n_events=1)
    paths = result.write(tmp_path)
    names = {p.name for p in paths}
    assert {"tpc_monitor.root", "channels.csv", "rms_vs_channel.png", "summary.json"} <= names
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["summary"]["dead_channels"] == list(DEAD)


def test_analyse_refuses_zero_events(synthetic):
    with pytest.raises(ValueError, match="no event"):
        tpc_monitor.analyse(synthetic, n_events=0)


def test_analyse_simulated_file_matches_truth(simulated):
    path, truth = simulated
    result = tpc_monitor.analyse(path, figures=False)
    s = result.summary
    assert sorted(s["dead_channels"]) == sorted(truth.dead_channels.tolist())
    assert sorted(s["noisy_channels"]) == sorted(truth.noisy_channels.tolist())
    for fiber, lines in truth.coherent_lines.items():
        found = s["coherent_lines_khz"].get(str(fiber), [])
        for f in lines:
            assert any(abs(g - f) < 1.0 for g in found), (fiber, f, found)
    assert set(s["coherent_lines_khz"]) <= {str(f) for f in truth.coherent_lines}
    rate = result.tables["pds"].pulse_rate_hz.mean()
    assert rate == pytest.approx(load_truth(path).pds_rate_per_us * 1e6, rel=0.35)
