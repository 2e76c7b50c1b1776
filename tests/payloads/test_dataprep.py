"""Unit tests of payloads.dataprep on small synthetic waveform blocks."""

from __future__ import annotations

import numpy as np
import pytest
from p3s.payloads import dataprep


def _noise_block(rng, rows=64, ticks=4000, ped=900.0, sigma=4.0):
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (rows,))
    x = ped + rng.normal(0.0, 1.0, (rows, ticks)) * sig[:, None]
    return np.rint(x).astype(np.uint16)


def test_integer_quantiles_match_gaussian_median_and_sigma():
    rng = np.random.default_rng(1)
    sigmas = np.array([0.8, 2.0, 4.0, 12.0] * 8)
    adc = _noise_block(rng, rows=sigmas.size, ticks=20000, ped=901.3, sigma=sigmas)
    ped, rms = dataprep.pedestal_and_rms(adc)
    assert ped.dtype == np.float32 and rms.dtype == np.float32
    # statistical error of a median: 1.253 sigma / sqrt(n); plus the bin-interpolation bias
    assert np.all(np.abs(ped - 901.3) < 4 * 1.253 * sigmas / np.sqrt(20000) + 0.05)
    # digitisation adds 1/12 ADC^2 of variance (Sheppard); below 1 ADC the model is coarser
    expected = np.sqrt(sigmas**2 + 1 / 12)
    assert np.all(np.abs(rms / expected - 1)[sigmas >= 2] < 0.04)
    assert np.all(np.abs(rms / expected - 1)[sigmas < 2] < 0.12)


def test_pedestal_and_rms_ignore_signal_pulses():
    rng = np.random.default_rng(2)
    adc = _noise_block(rng, rows=16, ticks=6000, sigma=3.0).astype(np.int32)
    adc[:, 1000:1150] += 300  # 2.5 % of samples carry a large pulse
    adc = adc.astype(np.uint16)
    ped, rms = dataprep.pedestal_and_rms(adc)
    assert np.all(np.abs(ped - 900) < 0.3)
    assert np.all(np.abs(rms - 3.0) < 0.3)
    assert np.all(adc.std(axis=1) > 40)  # the plain RMS would be ruined


def test_integer_quantiles_fall_back_to_exact_for_far_outliers():
    rng = np.random.default_rng(3)
    adc = _noise_block(rng, rows=4, ticks=1000, sigma=2.0)
    adc[0, :600] = 3000  # most samples far outside the first guess's window
    adc[1] = 0  # stuck at zero
    got = dataprep.integer_quantiles(adc, (0.25, 0.5, 0.75))
    exact = np.quantile(adc.astype(float), (0.25, 0.5, 0.75), axis=1)
    assert np.allclose(got[:, :2], exact[:, :2], atol=0.6)
    assert dataprep.robust_rms(adc)[1] == 0.0


def test_step_subsampling_gives_close_values():
    rng = np.random.default_rng(4)
    adc = _noise_block(rng, rows=32, ticks=6000, sigma=5.0)
    full = dataprep.pedestal_and_rms(adc)
    sub = dataprep.pedestal_and_rms(adc, step=4)
    assert np.allclose(full[0], sub[0], atol=0.5)
    assert np.allclose(full[1], sub[1], rtol=0.1)


def test_integer_quantiles_reject_floats_and_bad_shapes():
    with pytest.raises(TypeError, match="integer"):
        dataprep.integer_quantiles(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="2-D"):
        dataprep.pedestal(np.zeros(5, dtype=np.uint16))


def test_subtract_pedestal_is_float32_per_row():
    adc = np.array([[10, 12, 14], [100, 100, 101]], dtype=np.uint16)
    x = dataprep.subtract_pedestal(adc, np.array([12, 100], dtype=np.float32))
    assert x.dtype == np.float32
    assert np.array_equal(x, [[-2, 0, 2], [0, 0, 1]])
    with pytest.raises(ValueError, match="pedestal shape"):
        dataprep.subtract_pedestal(adc, np.zeros(3))


def test_robust_rms_float_matches_sigma():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2.5, (8, 20000)).astype(np.float32)
    assert np.allclose(dataprep.robust_rms_float(x), 2.5, rtol=0.03)


def test_flag_dead_and_noisy_per_group():
    rng = np.random.default_rng(6)
    rms = np.concatenate([rng.normal(3.0, 0.15, 100), rng.normal(5.0, 0.25, 100)])
    groups = np.repeat([0, 1], 100)
    rms[[3, 150]] = [0.0, 0.6]  # dead: stuck, and disconnected (only electronics noise)
    rms[[10, 160]] = [6.5, 9.0]  # noisy, about 2x the group median
    dead = dataprep.flag_dead(rms, groups)
    noisy = dataprep.flag_noisy(rms, groups, dead=dead)
    assert set(np.flatnonzero(dead)) == {3, 150}
    assert set(np.flatnonzero(noisy)) == {10, 160}
    # 4.5 is noisy for the U group but normal for the V group: groups matter
    assert not dataprep.flag_noisy(np.r_[rms, 4.5], np.r_[groups, 1])[-1]


def test_flag_noisy_needs_min_ratio_when_spread_is_tiny():
    rms = np.full(50, 3.0)
    rms[0] = 3.2
    assert not dataprep.flag_noisy(rms).any()


def test_signal_mask_pads_around_pulses():
    x = np.zeros((2, 50), np.float32)
    x[0, 20] = 10
    x[1, 5] = -10  # bipolar signals count too
    m = dataprep.signal_mask(x, np.ones(2), n_sigma=4, pad=3)
    assert np.array_equal(np.flatnonzero(m[0]), np.arange(17, 24))
    assert np.array_equal(np.flatnonzero(m[1]), np.arange(2, 9))


def test_masked_median_equals_median_of_unmasked_samples():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(9, 40)).astype(np.float32)
    mask = rng.random((9, 40)) < 0.4
    mask[:, 0] = True  # no sample left
    mask[:8, 1] = True  # one sample left
    got = dataprep.masked_median(x, mask, min_rows=1)
    for t in range(1, 40):
        assert got[t] == pytest.approx(np.median(x[~mask[:, t], t]), abs=1e-6)
    assert got[0] == 0.0
    assert dataprep.masked_median(x, mask, min_rows=2)[1] == 0.0
    assert np.allclose(dataprep.masked_median(x), np.median(x, axis=0))


def _coherent_block(rng, rows=48, ticks=3000):
    t = np.arange(ticks)
    # slow enough to be interpolated under the track, where no channel is free of signal
    coherent = 6.0 * np.sin(2 * np.pi * t * 0.5e-6 * 4e3) + rng.normal(0, 2.0, ticks)
    x = rng.normal(0, 2.5, (rows, ticks)) + coherent
    # a track parallel to the wire plane: every channel sees its pulse at the same ticks
    pulse = 60 * np.exp(-0.5 * ((t - 1500) / 3.0) ** 2)
    x += pulse
    return x.astype(np.float32), coherent, pulse


def test_remove_coherent_noise_keeps_isochronous_signal():
    rng = np.random.default_rng(8)
    x, coherent, pulse = _coherent_block(rng)
    plane = np.full(x.shape[0], 2)
    rms = dataprep.robust_rms_float(x)
    good = np.ones(x.shape[0], bool)
    good[5] = False
    x[5] = 0.0  # a dead channel stays as it is
    cleaned, noise = dataprep.remove_coherent_noise(x, plane, rms, good=good)
    assert cleaned is not x and np.array_equal(cleaned[5], x[5])
    quiet = np.abs(np.arange(x.shape[1]) - 1500) > 40
    assert np.std(noise[2][quiet] - coherent[quiet]) < 1.0
    assert np.allclose(dataprep.robust_rms_float(cleaned[good][:, quiet]), 2.5, rtol=0.12)
    charge = cleaned[good][:, 1470:1530].sum(axis=1)
    # the white part of the coherent noise under the track cannot be removed: 60 ticks x 2 ADC
    assert abs(np.median(charge) - pulse.sum()) < 2.0 * np.sqrt(60) * 2.0


def test_remove_coherent_noise_treats_planes_separately():
    rng = np.random.default_rng(9)
    ticks = 2000
    x = rng.normal(0, 1.0, (80, ticks)).astype(np.float32)
    x[:40] += 10 * np.sin(np.arange(ticks) / 7.0)
    plane = np.repeat([0, 1], 40)
    cleaned, noise = dataprep.remove_coherent_noise(x, plane, np.full(80, 7.0), inplace=True)
    assert cleaned is x
    assert set(noise) == {0, 1}
    assert np.std(noise[1]) < 0.5 and np.std(noise[0]) > 5
    assert np.allclose(dataprep.robust_rms_float(cleaned), 1.0, rtol=0.15)


def test_prepare_block_end_to_end():
    rng = np.random.default_rng(10)
    adc = _noise_block(rng, rows=48, ticks=3000, sigma=3.0).astype(np.int32)
    common = np.rint(5 * np.sin(np.arange(3000) / 5.0)).astype(np.int32)
    adc += common
    adc[7] = 905  # stuck
    prep = dataprep.prepare_block(adc.astype(np.uint16), np.full(48, 2))
    assert np.flatnonzero(prep.dead).tolist() == [7]
    assert prep.waveforms.dtype == np.float32 and prep.waveforms.shape == (48, 3000)
    good = ~prep.dead
    assert np.allclose(dataprep.robust_rms_float(prep.waveforms[good]), 3.0, rtol=0.15)
    assert np.all(prep.rms[good] > 4.0)  # the raw noise included the coherent part
