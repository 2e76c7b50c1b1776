"""TPC monitor: channel pedestals and noise, dead and noisy channels, noise spectra per fiber.

For every event and every readout fiber (one ``adc`` chunk of 128 channels) the monitor
computes, without ever holding more than one fiber block:

* the pedestal (median) and robust noise RMS of each channel (:mod:`p3s.payloads.dataprep`),
  and their medians over events; dead channels (RMS far below the median of their APA and
  plane, or stuck) and noisy channels (RMS far above it) follow from those;
* the power spectral density of each channel (Hann window, real FFT of the float32 block),
  accumulated into the two fiber views p3s showed: the *persistent FFT*, a 2-D histogram of
  frequency [kHz] x power [dB re 1 ADC^2/Hz] filled with every channel and event of the
  fiber, and the *profiled FFT*, the mean power spectral density vs frequency;
* coherent-noise lines: peaks of a fiber's profiled FFT that stand above its smooth
  background (block medians of the spectrum in dB).

The photon detectors get a baseline, a noise RMS and a pulse rate per channel.

Public API: :func:`analyse` (the payload), and the numpy pieces it is built from:
:class:`SpectrumBinning`, :func:`squared_parts`, :func:`power_spectra`, :func:`group_power`,
:func:`grouped_counts`, :func:`persistent_counts`, :func:`find_lines`, :func:`pds_stats`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import hist
import numpy as np
import pandas
import scipy.fft
from scipy.signal import find_peaks

from . import dataprep
from .products import PayloadResult, new_figure
from .rawformat import Geometry, RawFile, open_raw

__all__ = [
    "PDS_SAMPLE_NS",
    "PLANE_NAMES",
    "SpectrumBinning",
    "analyse",
    "find_lines",
    "group_power",
    "grouped_counts",
    "pds_stats",
    "persistent_counts",
    "power_spectra",
    "squared_parts",
]

PAYLOAD = "tpc_monitor"
PLANE_NAMES = ("U", "V", "X")
NOISE_STEP = 8
"""Pedestal and RMS use every eighth tick: 750 samples per channel and event give them to
3% (the median over events does better), at a third of the cost of using all ticks."""
PERSISTENT_FREQ_BINS = 500
"""Target number of frequency bins of the persistent FFT (native bins are summed in groups)."""
DB_RANGE = (-100.0, 0.0)
"""Power axis of the persistent FFT, dB re 1 ADC^2/Hz."""
DB_BINS = 100
PDS_SAMPLE_NS = 1e3 / 150.0
"""Photon-detector sampling period [ns]. The format does not carry it; the protoDUNE-SP SSP
digitisers sample at 150 MHz."""
N_FIGURE_FIBERS = 4
TILE_ROWS = 64
"""Channels whose spectra are computed together: a 64-row tile's float32 block and its FFT
(1.5 MB each) stay in the cache between steps, where a whole 128-channel
fiber's do not (measured: a full event's spectra 0.32 s in tiles of 64, 0.38 s in 128)."""


# --------------------------------------------------------------------------------------------
# Spectra


@dataclass(frozen=True)
class SpectrumBinning:
    """Frequency binning of the noise spectra of one readout window.

    Attributes:
        n_ticks: samples per waveform.
        tick_us: sampling period [us].
        rebin: native frequency bins summed into one persistent-FFT bin.
        n_groups: persistent-FFT frequency bins (native bins ``0 .. n_groups * rebin - 1``).
    """

    n_ticks: int
    tick_us: float
    rebin: int
    n_groups: int

    @classmethod
    def for_readout(
        cls, n_ticks: int, tick_us: float, target_bins: int = PERSISTENT_FREQ_BINS
    ) -> SpectrumBinning:
        """Binning for waveforms of ``n_ticks`` samples every ``tick_us`` microseconds."""
        if n_ticks < 4:
            raise ValueError(f"n_ticks must be >= 4 for a spectrum, got {n_ticks}")
        n_freq = n_ticks // 2 + 1
        rebin = max(1, round((n_freq - 1) / target_bins))
        return cls(n_ticks, tick_us, rebin, (n_freq - 1) // rebin)

    @property
    def n_freq(self) -> int:
        """Native frequency bins of ``rfft``: ``n_ticks // 2 + 1``."""
        return self.n_ticks // 2 + 1

    @property
    def df_khz(self) -> float:
        """Native frequency step [kHz]."""
        return 1e3 / (self.n_ticks * self.tick_us)

    @cached_property
    def freq_khz(self) -> np.ndarray:
        """``float64`` ``(n_freq,)``, frequency of each native bin [kHz]."""
        return np.arange(self.n_freq) * self.df_khz

    @cached_property
    def window(self) -> np.ndarray:
        """``float32`` ``(n_ticks,)`` periodic Hann window.

        It keeps a line's leakage within a few bins, and a constant (the pedestal) leaks into
        frequency bins 0 and 1 only, so the pedestal can be removed after the FFT.
        """
        return np.hanning(self.n_ticks + 1)[:-1].astype(np.float32)

    @cached_property
    def window_dc(self) -> np.ndarray:
        """``complex64`` ``(2,)``: ``rfft`` of the window in bins 0 and 1 (the others are 0)."""
        return np.fft.rfft(self.window.astype(np.float64))[:2].astype(np.complex64)

    @cached_property
    def psd_scale(self) -> np.ndarray:
        """``float64`` ``(n_freq,)``: one-sided PSD [ADC^2/Hz] = ``psd_scale * |rfft|^2``."""
        dt_s = self.tick_us * 1e-6
        w2 = float(np.sum(self.window.astype(np.float64) ** 2))
        scale = np.full(self.n_freq, 2.0 * dt_s / w2)
        scale[0] /= 2.0
        if self.n_ticks % 2 == 0:
            scale[-1] /= 2.0
        return scale

    def frequency_axis(self) -> hist.axis.Regular:
        """Persistent-FFT frequency axis [kHz]: group ``j`` holds native bins ``j*rebin ..``."""
        lo = -0.5 * self.df_khz
        return hist.axis.Regular(
            self.n_groups,
            lo,
            lo + self.n_groups * self.rebin * self.df_khz,
            name="freq",
            label="frequency [kHz]",
            flow=False,
        )


def squared_parts(
    adc: np.ndarray, ped: np.ndarray, binning: SpectrumBinning, scratch: np.ndarray
) -> np.ndarray:
    """Squared real and imaginary parts of the real FFT of each pedestal-subtracted, windowed
    waveform, interleaved: ``re_0^2, im_0^2, re_1^2, im_1^2, ...``.

    The raw counts are windowed while being converted to float32, and the pedestal is removed
    from bins 0 and 1 after the FFT (``X -= ped * rfft(window)``, exact for the periodic Hann
    window): one pass over the block fewer than subtracting first. Kept interleaved, the
    squares take one contiguous pass; the sums that need ``|X|^2`` (frequency groups, the mean
    spectrum) add the pairs as they go, so ``re^2 + im^2`` never needs a pass of its own.

    Args:
        adc: integer ``(rows, ticks)``, raw ADC counts.
        ped: ``(rows,)`` pedestal per row, ADC counts.
        binning: gives the window.
        scratch: ``float32`` buffer of shape ``(rows, ticks)``, overwritten.

    Returns:
        ``float32`` ``(rows, 2 * (ticks // 2 + 1))`` [ADC^2], a view of the FFT's output.
    """
    np.multiply(adc, binning.window, out=scratch, dtype=np.float32)
    # scipy.fft is numpy's pocketfft vectorised over rows: for a 128 x 6000 float32 block
    # it is 3.5x faster than numpy.fft.rfft (which is slower in float32 than in float64).
    spectrum = scipy.fft.rfft(scratch, axis=1, overwrite_x=True)
    spectrum[:, :2] -= np.asarray(ped, dtype=np.float32)[:, None] * binning.window_dc
    parts = spectrum.view(np.float32)
    return np.square(parts, out=parts)


def power_spectra(
    adc: np.ndarray,
    ped: np.ndarray,
    binning: SpectrumBinning,
    scratch: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Squared magnitude of the real FFT of each pedestal-subtracted, windowed waveform.

    Args:
        adc: integer ``(rows, ticks)``, raw ADC counts.
        ped: ``(rows,)`` pedestal per row, ADC counts.
        binning: gives the window.
        scratch: ``float32`` buffer of shape ``(rows, ticks)``, overwritten.
        out: ``float32`` buffer of shape ``(rows, ticks // 2 + 1)`` for the result.

    Returns:
        ``float32`` ``(rows, ticks // 2 + 1)``, ``|rfft|^2`` in ADC^2 (multiply by
        :attr:`SpectrumBinning.psd_scale` for ADC^2/Hz).
    """
    parts = squared_parts(adc, ped, binning, scratch)
    return np.add(parts[:, 0::2], parts[:, 1::2], out=out)


def group_power(
    power: np.ndarray, binning: SpectrumBinning, out: np.ndarray | None = None
) -> np.ndarray:
    """Sum ``|rfft|^2`` over the native bins of each persistent-FFT frequency group.

    Args:
        power: ``float32`` ``(rows, n_freq)``, ``|rfft|^2`` from :func:`power_spectra`, or
            ``(rows, 2 * n_freq)``, the interleaved squares from :func:`squared_parts` [ADC^2].
        binning: the frequency binning (group ``j`` holds native bins ``j*rebin ..``).
        out: ``float32`` buffer ``(rows, n_groups)`` for the result.

    Returns:
        ``float32`` ``(rows, n_groups)``, summed ``|rfft|^2`` [ADC^2].
    """
    width = binning.rebin * (power.shape[1] // binning.n_freq)  # values per group
    g = binning.n_groups
    native = power[:, : g * width].reshape(power.shape[0], g, width)
    # A matrix-vector product (BLAS) sums the bins of every group in one pass over the
    # block: 4x faster than strided adds (measured 29 us vs 0.12 ms per 64-row tile).
    return np.matmul(native, np.ones(width, dtype=np.float32), out=out)


def grouped_counts(
    grouped: np.ndarray,
    binning: SpectrumBinning,
    *,
    db_range: tuple[float, float] = DB_RANGE,
    n_db: int = DB_BINS,
) -> np.ndarray:
    """Histogram grouped spectra into frequency group x power bins (``grouped`` is overwritten).

    Args:
        grouped: ``float32`` ``(rows, n_groups)`` from :func:`group_power`; used as scratch.
        binning: the frequency binning.
        db_range: power axis range, dB re 1 ADC^2/Hz.
        n_db: number of power bins.

    Returns:
        ``int64`` ``(n_groups, n_db + 2)`` counts; power column 0 is the underflow and column
        ``n_db + 1`` the overflow.
    """
    g = binning.n_groups
    # A group is the mean PSD of its native bins (all but bin 0 carry the one-sided factor 2).
    # Natural log, scaled to dB: numpy's float32 log is vectorised, its log10 is 4x slower.
    with np.errstate(divide="ignore"):  # a zero power gives -inf: the underflow bin
        db = np.log(grouped, out=grouped)
    lo, hi = db_range
    # Python floats: a numpy float64 scalar would make numpy compute the float32 block in
    # float64 and cast back (measured 4x slower for these two steps).
    offset = 10.0 * math.log10(float(binning.psd_scale[1]) / binning.rebin)
    to_bin = n_db / (hi - lo)
    db *= 10.0 / math.log(10.0) * to_bin
    db += (offset - lo) * to_bin + 1.0
    np.clip(db, 0, n_db + 1, out=db)
    # int32 indices: the cast is 3x faster than to intp, and g * (n_db + 2) fits.
    index = db.astype(np.int32)
    index += np.arange(0, g * (n_db + 2), n_db + 2, dtype=np.int32)[None, :]
    return np.bincount(index.ravel(), minlength=g * (n_db + 2)).reshape(g, n_db + 2)


def persistent_counts(
    power: np.ndarray,
    binning: SpectrumBinning,
    *,
    db_range: tuple[float, float] = DB_RANGE,
    n_db: int = DB_BINS,
) -> np.ndarray:
    """Histogram every channel's spectrum into frequency group x power bins: :func:`grouped_counts`
    of :func:`group_power` (``power`` is ``|rfft|^2`` [ADC^2] from :func:`power_spectra`, or the
    squares from :func:`squared_parts`, and is left as it is)."""
    return grouped_counts(group_power(power, binning), binning, db_range=db_range, n_db=n_db)


def _median_last(a: np.ndarray) -> np.ndarray:
    """Median over the last axis of a NaN-free array (``np.partition``: 4x ``np.median``)."""
    n = a.shape[-1]
    half = n // 2
    if n % 2:
        return np.partition(a, half, axis=-1)[..., half]
    part = np.partition(a, (half - 1, half), axis=-1)
    return 0.5 * (part[..., half - 1] + part[..., half])


def find_lines(
    freq_khz: np.ndarray,
    mean_psd: np.ndarray,
    *,
    min_khz: float = 2.0,
    min_excess_db: float = 6.0,
    n_sigma: float = 8.0,
    smooth_khz: float = 15.0,
    max_lines: int = 10,
) -> list[dict[str, float]] | list[list[dict[str, float]]]:
    """Coherent-noise lines: peaks of mean power spectra above their smooth background.

    The background is the median of the spectrum in dB over blocks of ``smooth_khz``,
    interpolated linearly between block centres (a line, a few bins wide, does not move a
    block's median); a peak is a line when it exceeds the background by ``min_excess_db`` and
    by ``n_sigma`` times the robust scatter (1.4826 MAD) of the spectrum around it.

    Args:
        freq_khz: ``(n_freq,)`` frequencies [kHz].
        mean_psd: ``(n_freq,)`` mean PSD [ADC^2/Hz] (a profiled FFT), or ``(n, n_freq)`` for
            ``n`` spectra at once.
        min_khz: lines below this frequency are not searched (pedestal drifts, signal).
        min_excess_db: minimum height above the background [dB].
        n_sigma: minimum height in units of the spectrum's scatter around the background.
        smooth_khz: width of the median blocks [kHz].
        max_lines: keep the highest lines only.

    Returns:
        list of ``{"freq_khz": ..., "excess_db": ...}`` sorted by frequency; for 2-D input, one
        such list per spectrum.
    """
    freq = np.asarray(freq_khz, dtype=np.float64)
    psd = np.asarray(mean_psd, dtype=np.float64)
    spectra = psd[None, :] if psd.ndim == 1 else psd
    use = freq >= min_khz
    if use.sum() < 8:
        return [] if psd.ndim == 1 else [[] for _ in spectra]
    f = freq[use]
    db = 10.0 * np.log10(np.maximum(spectra[:, use], 1e-300))
    width = min(max(5, round(smooth_khz / (freq[1] - freq[0]))), db.shape[1])
    n_blocks = db.shape[1] // width
    blocks = db[:, : n_blocks * width].reshape(db.shape[0], n_blocks, width)
    block_median = _median_last(blocks)
    # Linear interpolation between block centres, for all spectra at once.
    pos = np.clip((np.arange(db.shape[1]) + 0.5) / width - 0.5, 0, n_blocks - 1)
    left = np.minimum(pos.astype(np.int64), max(n_blocks - 2, 0))
    frac = pos - left
    right = np.minimum(left + 1, n_blocks - 1)
    excess = db - (block_median[:, left] * (1 - frac) + block_median[:, right] * frac)
    centred = excess - _median_last(excess)[:, None]
    scatter = 1.4826 * _median_last(np.abs(centred, out=centred))
    height = np.maximum(min_excess_db, n_sigma * scatter)
    found = []
    for row, h in zip(excess, height, strict=True):
        if not (row > h).any():
            found.append([])
            continue
        # Hann leakage spreads a line over about 4 native bins; keep peaks apart by more.
        peaks, props = find_peaks(row, height=h, distance=4)
        if peaks.size > max_lines:
            keep = np.argsort(props["peak_heights"])[::-1][:max_lines]
            peaks = np.sort(peaks[keep])
        found.append([{"freq_khz": float(f[k]), "excess_db": float(row[k])} for k in peaks])
    return found[0] if psd.ndim == 1 else found


# --------------------------------------------------------------------------------------------
# Photon detectors


def pds_stats(wave: np.ndarray, *, n_sigma: float = 6.0, min_adc: float = 5.0) -> dict:
    """Baseline, noise and pulse count of each photon-detector waveform.

    A pulse is a run of samples beyond ``max(n_sigma * noise, min_adc)`` from the baseline,
    counted once at its leading edge; the polarity of each channel is the side of the baseline
    with the larger excursions, so either pulse sign works.

    Args:
        wave: integer ``(n_pds_channels, n_samples)``, raw ADC counts.
        n_sigma: threshold in units of the robust noise RMS.
        min_adc: threshold floor in ADC counts (channels with almost no noise).

    Returns:
        dict of ``(n_pds_channels,)`` arrays: ``baseline`` and ``noise`` (``float32``, ADC
        counts), ``pulses`` (``int64``).
    """
    base, noise = dataprep.pedestal_and_rms(wave)
    x = dataprep.subtract_pedestal(wave, base)
    sign = np.where(x.max(axis=1) >= -x.min(axis=1), 1.0, -1.0).astype(np.float32)
    x *= sign[:, None]
    above = x > np.maximum(n_sigma * noise, min_adc)[:, None]
    edges = above[:, 1:] & ~above[:, :-1]
    pulses = edges.sum(axis=1) + above[:, 0]
    return {"baseline": base, "noise": noise, "pulses": pulses.astype(np.int64)}


# --------------------------------------------------------------------------------------------
# Accumulation over events and fibers


def fiber_noise(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pedestal and robust RMS of each channel of a fiber block (``float32``, ADC counts),
    from every ``NOISE_STEP``-th tick."""
    return dataprep.pedestal_and_rms(block, step=NOISE_STEP)


class _Accumulator:
    """Running sums over events for every channel, fiber and photon-detector channel."""

    def __init__(self, geometry: Geometry, binning: SpectrumBinning) -> None:
        self.geometry = geometry
        self.binning = binning
        self.ped: list[np.ndarray] = []  # per event: float32 (n_channels,)
        self.rms: list[np.ndarray] = []
        self.n_events = 0
        self.profile: dict[int, np.ndarray] = {}
        # Persistent FFTs are filled in place: a second copy of 120 fibers x 400 kB would cost
        # as much in page faults as the histogramming itself.
        self.persistent: dict[int, hist.Hist] = {}
        self._freq_axis = binning.frequency_axis()
        self._power_axis = hist.axis.Regular(
            DB_BINS, *DB_RANGE, name="power", label="PSD [dB re 1 ADC^2/Hz]"
        )
        self.pds: dict[str, np.ndarray] | None = None
        self.pds_samples = 0
        # One tile's work buffers, reused from tile to tile (fresh arrays each time would cost
        # their page faults again and again).
        self._scratch = np.empty((TILE_ROWS, binning.n_ticks), dtype=np.float32)
        self._ones = np.ones(TILE_ROWS, dtype=np.float32)
        self._grouped = np.empty((0, binning.n_groups), dtype=np.float32)  # grows to a fiber

    def add_fiber(
        self,
        fiber: int,
        rows: slice | np.ndarray,
        block: np.ndarray,
        noise: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """Add one fiber block (``uint16`` ``(rows, ticks)``) of one event; ``noise`` is its
        :func:`fiber_noise` (computed with the read)."""
        ped, rms = noise
        self.ped[-1][rows] = ped
        self.rms[-1][rows] = rms
        if fiber not in self.profile:
            self.profile[fiber] = np.zeros(self.binning.n_freq)
            self.persistent[fiber] = hist.Hist(
                self._freq_axis,
                self._power_axis,
                storage=hist.storage.Double(),
                label=f"persistent FFT, fiber {fiber}",
            )
        profile, persistent = self.profile[fiber], self.persistent[fiber].view(flow=True)
        if self._grouped.shape[0] < block.shape[0]:
            self._grouped = np.empty((block.shape[0], self.binning.n_groups), np.float32)
        for start in range(0, block.shape[0], TILE_ROWS):
            tile = block[start : start + TILE_ROWS]
            n = tile.shape[0]
            parts = squared_parts(tile, ped[start : start + n], self.binning, self._scratch[:n])
            column_sums = self._ones[:n] @ parts  # one BLAS pass, re^2 and im^2 apart
            profile += column_sums[0::2]
            profile += column_sums[1::2]
            group_power(parts, self.binning, out=self._grouped[start : start + n])
            # Freed before the next FFT allocates its output, which then reuses this memory
            # (kept alive one step longer, the FFT's 1.5 MB page-fault afresh: r2c 35% slower).
            del parts
        # One histogram per fiber, not per tile: bincount's 400 kB of counts, and adding them
        # to the persistent FFT, cost as much as the tile's own binning.
        persistent += grouped_counts(self._grouped[: block.shape[0]], self.binning)

    def add_pds(self, wave: np.ndarray | None) -> None:
        """Add one event's photon-detector waveforms (or nothing when absent)."""
        if wave is None or wave.size == 0:
            return
        stats = pds_stats(wave)
        if self.pds is None:
            self.pds = {k: np.zeros(v.shape, dtype=np.float64) for k, v in stats.items()}
            self.pds["events"] = np.zeros(wave.shape[0])
        for key, value in stats.items():
            self.pds[key] += value
        self.pds["events"] += 1
        self.pds_samples += wave.shape[1]


def _iter_events(raw: RawFile, n_events: int | None) -> range:
    n = raw.n_events if n_events is None else min(int(n_events), raw.n_events)
    if n <= 0:
        raise ValueError(f"{raw.path}: no event to analyse (file has {raw.n_events})")
    return range(n)


def spare_core() -> bool:
    """Whether this process may run on more than one core (a batch slot's cpuset says)."""
    return len(os.sched_getaffinity(0)) > 1


def accumulate(
    raw: RawFile, *, n_events: int | None = None, read_ahead: bool = False
) -> _Accumulator:
    """Stream the events of ``raw`` one fiber at a time into an accumulator (``read_ahead``:
    the next fiber is read in a thread meanwhile, see :meth:`RawFile.iter_fibers`)."""
    binning = SpectrumBinning.for_readout(raw.n_ticks, raw.tick_us)
    acc = _Accumulator(raw.geometry, binning)
    for i in _iter_events(raw, n_events):
        acc.ped.append(np.zeros(raw.geometry.n_channels, np.float32))
        acc.rms.append(np.zeros(raw.geometry.n_channels, np.float32))
        # The pedestals are computed with the read, in the read-ahead thread when there is one.
        fibers = raw.iter_fibers_prepared(i, fiber_noise, read_ahead=read_ahead)
        for fiber, rows, block, noise in fibers:
            acc.add_fiber(fiber, rows, block, noise)
        acc.add_pds(raw.read_pds(i))
        acc.n_events += 1
    return acc


def _n_rows(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


# --------------------------------------------------------------------------------------------
# Products


def _channel_table(acc: _Accumulator) -> pandas.DataFrame:
    geo = acc.geometry
    # The median over events: a track running along a wire for a large part of one event's
    # readout inflates that event's RMS of the channel, not the median.
    ped = np.median(np.stack(acc.ped), axis=0)
    rms = np.median(np.stack(acc.rms), axis=0)
    group = geo.apa.astype(np.int64) * 3 + geo.plane
    dead = dataprep.flag_dead(rms, group)
    noisy = dataprep.flag_noisy(rms, group, dead=dead)
    return pandas.DataFrame(
        {
            "channel": geo.channel,
            "apa": geo.apa,
            "tpc": geo.tpc,
            "plane": geo.plane,
            "wire": geo.wire,
            "fiber": geo.fiber,
            "pedestal": ped.astype(np.float32),
            "rms": rms.astype(np.float32),
            "dead": dead,
            "noisy": noisy,
        }
    )


def _plane_table(channels: pandas.DataFrame) -> pandas.DataFrame:
    good = channels.assign(rms_good=channels.rms.where(~channels.dead))
    table = (
        good.groupby(["apa", "plane"])
        .agg(
            n_channels=("channel", "size"),
            mean_rms=("rms_good", "mean"),
            mean_pedestal=("pedestal", "mean"),
            n_dead=("dead", "sum"),
            n_noisy=("noisy", "sum"),
        )
        .reset_index()
    )
    table.insert(2, "plane_name", [PLANE_NAMES[p] for p in table.plane])
    return table


def _pds_table(acc: _Accumulator) -> pandas.DataFrame | None:
    if acc.pds is None or acc.geometry.pds_channel is None:
        return None
    events = acc.pds["events"]
    window_s = acc.pds_samples / events.max() * PDS_SAMPLE_NS * 1e-9
    return pandas.DataFrame(
        {
            "pds_channel": acc.geometry.pds_channel,
            "apa": acc.geometry.pds_apa,
            "baseline": acc.pds["baseline"] / events,
            "noise": acc.pds["noise"] / events,
            "pulse_rate_hz": acc.pds["pulses"] / (events * window_s),
        }
    )


def _fiber_label(geo: Geometry, fiber: int) -> str:
    rows = geo.rows_of_fiber(fiber)
    return f"apa{int(geo.apa[rows][0])}/fiber{fiber:03d}"


def _fiber_histograms(acc: _Accumulator) -> dict[str, hist.Hist]:
    b = acc.binning
    native_axis = hist.axis.Regular(
        b.n_freq,
        -0.5 * b.df_khz,
        (b.n_freq - 0.5) * b.df_khz,
        name="freq",
        label="frequency [kHz]",
        flow=False,
    )
    out: dict[str, hist.Hist] = {}
    for fiber in sorted(acc.profile):
        label = _fiber_label(acc.geometry, fiber)
        n_rows = _n_rows(acc.geometry.rows_of_fiber(fiber))
        profiled = hist.Hist(
            native_axis,
            storage=hist.storage.Double(),
            label=f"profiled FFT (mean PSD [ADC^2/Hz]), fiber {fiber}",
        )
        profiled.view()[...] = acc.profile[fiber] * b.psd_scale / (n_rows * acc.n_events)
        out[f"{label}/persistent_fft"] = acc.persistent[fiber]
        out[f"{label}/profiled_fft"] = profiled
    return out


def _channel_histograms(channels: pandas.DataFrame) -> dict[str, hist.Hist]:
    ch = channels.channel.to_numpy()
    axis = hist.axis.Integer(int(ch.min()), int(ch.max()) + 1, name="channel", label="channel")
    out = {}
    for column, unit in (("rms", "noise RMS [ADC]"), ("pedestal", "pedestal [ADC]")):
        h = hist.Hist(axis, storage=hist.storage.Double(), label=unit)
        h.fill(ch, weight=channels[column].to_numpy())
        out[f"{column}_vs_channel"] = h
    for (apa, plane), sub in channels.groupby(["apa", "plane"]):
        h = hist.Hist(
            hist.axis.Regular(100, 0.0, 20.0, name="rms", label="noise RMS [ADC]"),
            storage=hist.storage.Double(),
        )
        h.fill(sub.rms.to_numpy())
        out[f"apa{apa}/rms_plane{PLANE_NAMES[plane]}"] = h
    return out


def _lines(acc: _Accumulator, histograms: dict[str, hist.Hist]) -> dict[str, list[dict]]:
    fibers = sorted(acc.profile)
    labels = [_fiber_label(acc.geometry, f) for f in fibers]
    spectra = np.stack([histograms[f"{lb}/profiled_fft"].values() for lb in labels])
    found = find_lines(acc.binning.freq_khz, spectra)
    return {str(f): v for f, v in zip(fibers, found, strict=True) if v}


def _summary(
    acc: _Accumulator,
    channels: pandas.DataFrame,
    planes: pandas.DataFrame,
    lines: dict,
    pds: pandas.DataFrame | None,
) -> dict:
    good = channels[~channels.dead]
    per_plane = good.groupby("plane").rms.mean()
    summary = {
        "n_events": acc.n_events,
        "n_channels": int(len(channels)),
        "n_dead": int(channels.dead.sum()),
        "n_noisy": int(channels.noisy.sum()),
        "dead_channels": channels.channel[channels.dead].astype(int).tolist(),
        "noisy_channels": channels.channel[channels.noisy].astype(int).tolist(),
        "mean_rms": {PLANE_NAMES[p]: float(v) for p, v in per_plane.items()},
        "planes": planes.to_dict(orient="records"),
        "coherent_lines_khz": {f: [ln["freq_khz"] for ln in v] for f, v in lines.items()},
        "coherent_lines": lines,
    }
    if pds is not None:
        summary["pds"] = {
            "n_channels": int(len(pds)),
            "mean_noise": float(pds.noise.mean()),
            "mean_pulse_rate_hz": float(pds.pulse_rate_hz.mean()),
        }
    return summary


# --------------------------------------------------------------------------------------------
# Figures


def _vs_channel_figure(channels: pandas.DataFrame, column: str, ylabel: str):
    fig = new_figure(10, 4)
    ax = fig.add_subplot()
    for plane, sub in channels.groupby("plane"):
        ax.plot(sub.channel, sub[column], ".", ms=2, label=PLANE_NAMES[plane])
    for flag, marker in (("dead", "x"), ("noisy", "^")):
        sub = channels[channels[flag]]
        if len(sub):
            ax.plot(sub.channel, sub[column], marker, color="k", ms=5, label=flag)
    ax.set_xlabel("channel")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right", fontsize="small", ncol=5)
    return fig


def _fft_figure(persistent: hist.Hist, profiled: hist.Hist, title: str):
    fig = new_figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    counts = persistent.values()
    x, y = persistent.axes[0].edges, persistent.axes[1].edges
    mesh = ax1.pcolormesh(x, y, np.where(counts > 0, counts, np.nan).T, shading="flat")
    fig.colorbar(mesh, ax=ax1, label="entries")
    ax1.set_xlabel("frequency [kHz]")
    ax1.set_ylabel("PSD [dB re 1 ADC$^2$/Hz]")
    ax1.set_title(f"{title}: persistent FFT", fontsize="medium")
    psd = profiled.values()
    ax2.plot(profiled.axes[0].centers[1:], 10 * np.log10(np.maximum(psd[1:], 1e-30)), lw=0.7)
    ax2.set_xlabel("frequency [kHz]")
    ax2.set_ylabel("mean PSD [dB re 1 ADC$^2$/Hz]")
    ax2.set_title(f"{title}: profiled FFT", fontsize="medium")
    fig.tight_layout()
    return fig


def _figures(channels, histograms, lines, acc) -> dict:
    figures = {
        "rms_vs_channel": _vs_channel_figure(channels, "rms", "noise RMS [ADC]"),
        "pedestal_vs_channel": _vs_channel_figure(channels, "pedestal", "pedestal [ADC]"),
    }
    fibers = sorted(acc.profile)
    # Show fibers with coherent lines first, then the first fibers of the file.
    chosen = [int(f) for f in lines][:N_FIGURE_FIBERS]
    chosen += [f for f in fibers if f not in chosen][: N_FIGURE_FIBERS - len(chosen)]
    for fiber in chosen:
        label = _fiber_label(acc.geometry, fiber)
        figures[f"{label}/fft"] = _fft_figure(
            histograms[f"{label}/persistent_fft"], histograms[f"{label}/profiled_fft"], label
        )
    return figures


# --------------------------------------------------------------------------------------------
# Payload


def analyse(
    raw: RawFile | str | os.PathLike[str],
    *,
    n_events: int | None = None,
    figures: bool = True,
    read_ahead: bool | None = None,
) -> PayloadResult:
    """Run the TPC monitor on a raw file.

    Args:
        raw: an open :class:`~p3s.payloads.rawformat.RawFile`, or a path to open (and close).
        n_events: analyse the first ``n_events`` events only (default: all).
        figures: make the figures (False saves about a second per file).
        read_ahead: read the next fiber, and compute its pedestals, in a thread while this
            one is analysed (None: when the process may use a second core). Measured on one
            full event: 0.34-0.35 s instead of 0.44-0.46 s of wall time, for 0.04 s more CPU
            time.

    Returns:
        :class:`~p3s.payloads.products.PayloadResult` named ``"tpc_monitor"`` with tables
        ``channels`` (pedestal, rms [ADC], dead, noisy per channel), ``planes`` (per APA and
        plane), ``pds`` (baseline, noise [ADC], pulse_rate_hz per photon-detector channel),
        histograms ``apa{a}/fiber{f:03d}/persistent_fft`` and ``.../profiled_fft`` per fiber,
        ``rms_vs_channel``, ``pedestal_vs_channel``, ``apa{a}/rms_plane{U,V,X}``, and figures.
    """
    if not isinstance(raw, RawFile):
        with open_raw(raw) as opened:
            return analyse(opened, n_events=n_events, figures=figures, read_ahead=read_ahead)
    acc = accumulate(
        raw, n_events=n_events, read_ahead=spare_core() if read_ahead is None else read_ahead
    )
    channels = _channel_table(acc)
    planes = _plane_table(channels)
    pds = _pds_table(acc)
    histograms = _fiber_histograms(acc)
    lines = _lines(acc, histograms)
    histograms.update(_channel_histograms(channels))
    tables = {"channels": channels, "planes": planes}
    if pds is not None:
        tables["pds"] = pds
    return PayloadResult(
        payload=PAYLOAD,
        run=raw.run,
        subrun=raw.subrun,
        summary=_summary(acc, channels, planes, lines, pds),
        histograms=histograms,
        tables=tables,
        figures=_figures(channels, histograms, lines, acc) if figures else {},
    )
