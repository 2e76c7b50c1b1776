"""TPC data preparation: pedestals, robust noise, coherent-noise removal.

Every function works on one *block* of waveforms, a 2-D array of shape ``(rows, ticks)``: the
channels of one readout fiber (128 rows for protoDUNE-SP) for one event. Raw blocks are ADC
counts (``uint16``, 12-bit range); prepared blocks are ``float32`` ADC counts with the pedestal
removed. Nothing here reads files or knows the detector layout beyond the ``plane`` code of each
row (0 = U, 1 = V, 2 = X collection).

The pedestal and noise of a channel come from quantiles of its samples: the pedestal is the
median, the noise is the interquartile range divided by 1.349 (the RMS of a Gaussian with that
range). Both ignore the few samples that carry signal, unlike the mean and the plain RMS.

Coherent noise is the part of the noise shared by the channels of one fiber and plane (the same
front-end board and wire orientation). It is estimated tick by tick as the median over those
channels, leaving out dead channels and samples that look like signal, and subtracted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d

__all__ = [
    "IQR_TO_SIGMA",
    "PreparedBlock",
    "coherent_noise",
    "flag_dead",
    "flag_noisy",
    "integer_quantiles",
    "masked_median",
    "pedestal",
    "pedestal_and_rms",
    "prepare_block",
    "remove_coherent_noise",
    "robust_rms",
    "robust_rms_float",
    "signal_mask",
    "subtract_pedestal",
]

IQR_TO_SIGMA = 1.0 / 1.3489795003921634
"""Factor turning an interquartile range into the standard deviation of a normal distribution."""

_WINDOW = 256
"""Width in ADC counts of the per-channel histogram used for integer quantiles."""


def _as_2d(adc: np.ndarray) -> np.ndarray:
    a = np.asarray(adc)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (rows, ticks) array, got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError("the waveform block has no ticks")
    return a


def integer_quantiles(
    adc: np.ndarray,
    quantiles: tuple[float, ...] = (0.25, 0.5, 0.75),
    *,
    step: int = 1,
    window: int = _WINDOW,
) -> np.ndarray:
    """Quantiles of each row of an integer ADC block, interpolated within the integer bins.

    Each row is histogrammed in one-count bins over ``window`` counts around a first guess of
    its median, all rows in one ``numpy.bincount``; a sample of value ``k`` is taken as spread
    uniformly over ``[k - 0.5, k + 0.5)``, so the quantiles are continuous even when the noise
    is only a few counts wide. Rows whose quantiles fall at the edge of the window (more than a
    quarter of the samples far from the first guess) are recomputed exactly.

    Args:
        adc: integer array of shape ``(rows, ticks)``, ADC counts (``uint16`` raw data).
        quantiles: the quantiles wanted, each in ``[0, 1]``.
        step: use every ``step``-th tick only (1 = all); a speed/precision trade-off.
        window: width of the per-row histogram in ADC counts.

    Returns:
        ``float64`` array of shape ``(len(quantiles), rows)``, ADC counts.
    """
    a = _as_2d(adc)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"integer_quantiles needs integer ADC counts, got dtype {a.dtype}")
    sub = a[:, ::step]
    rows, n = sub.shape
    q = np.asarray(quantiles, dtype=np.float64)
    m = min(n, 31)
    guess = np.partition(sub[:, :m], m // 2, axis=1)[:, m // 2].astype(np.int64)
    low = guess - window // 2
    counts = _row_histograms(sub, low, window)
    # One cumulative sum over all rows; each quantile is then one binary search.
    cum = np.cumsum(counts.ravel())
    base = np.arange(rows) * window
    before = np.where(base > 0, cum[base - 1], 0)
    target = before[None, :] + q[:, None] * n  # (nq, rows)
    k = np.searchsorted(cum, target, side="left") - base[None, :]
    k = np.clip(k, 0, window - 1)
    flat = base[None, :] + k
    c_k = counts.ravel()[flat]
    below = cum[flat] - c_k
    frac = np.divide(target - below, c_k, out=np.full(k.shape, 0.5), where=c_k > 0)
    values = low[None, :] + k - 0.5 + frac
    # A stuck channel has all samples in one bin: its quantiles are that value, not a spread.
    single = counts.max(axis=1) == n
    values[:, single] = (low + counts.argmax(axis=1))[single]
    bad = np.any((k == 0) | (k == window - 1), axis=0) & ~single
    if bad.any():
        values[:, bad] = np.quantile(sub[bad].astype(np.float64), q, axis=1)
    return values


def _row_histograms(sub: np.ndarray, low: np.ndarray, window: int) -> np.ndarray:
    """Counts ``(rows, window)`` of ``sub[r] - low[r]`` in one-count bins, edges clipped."""
    rows = sub.shape[0]
    # 12-bit ADC values fit int16, and so do 128 rows x 256 bins: int16 halves the memory
    # traffic of the index arithmetic, which with bincount is the whole cost.
    small = sub.dtype in (np.uint16, np.int16) and rows * window <= 1 << 15
    dtype = np.int16 if small else np.intp
    values = sub.view(np.int16) if sub.dtype == np.uint16 and small else sub
    idx = np.subtract(values, low[:, None].astype(dtype), dtype=dtype)
    np.clip(idx, 0, window - 1, out=idx)
    idx += (np.arange(rows, dtype=dtype) * window)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * window).reshape(rows, window)


def pedestal_and_rms(adc: np.ndarray, *, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pedestal (median) and robust noise RMS (interquartile range / 1.349) of each row.

    Args:
        adc: integer array ``(rows, ticks)``, raw ADC counts.
        step: use every ``step``-th tick (see :func:`integer_quantiles`).

    Returns:
        ``(pedestal, rms)``, two ``float32`` arrays of shape ``(rows,)`` in ADC counts.
    """
    q25, q50, q75 = integer_quantiles(adc, (0.25, 0.5, 0.75), step=step)
    return q50.astype(np.float32), ((q75 - q25) * IQR_TO_SIGMA).astype(np.float32)


def pedestal(adc: np.ndarray, *, step: int = 1) -> np.ndarray:
    """Pedestal of each row: the median of its samples.

    Args:
        adc: integer array ``(rows, ticks)``, raw ADC counts.
        step: use every ``step``-th tick.

    Returns:
        ``float32`` array ``(rows,)``, ADC counts.
    """
    return integer_quantiles(adc, (0.5,), step=step)[0].astype(np.float32)


def robust_rms(adc: np.ndarray, *, step: int = 1) -> np.ndarray:
    """Robust noise RMS of each row: interquartile range / 1.349.

    Args:
        adc: integer array ``(rows, ticks)``, raw ADC counts.
        step: use every ``step``-th tick.

    Returns:
        ``float32`` array ``(rows,)``, ADC counts.
    """
    return pedestal_and_rms(adc, step=step)[1]


def robust_rms_float(x: np.ndarray, *, step: int = 1) -> np.ndarray:
    """Robust RMS (interquartile range / 1.349) of each row of a real-valued block.

    Args:
        x: float array ``(rows, ticks)``, e.g. pedestal-subtracted ADC counts.
        step: use every ``step``-th tick.

    Returns:
        ``float32`` array ``(rows,)``, same unit as ``x``.
    """
    a = _as_2d(x)[:, ::step]
    q25, q75 = np.quantile(a, (0.25, 0.75), axis=1)
    return ((q75 - q25) * IQR_TO_SIGMA).astype(np.float32)


def subtract_pedestal(adc: np.ndarray, ped: np.ndarray) -> np.ndarray:
    """Raw ADC block minus each row's pedestal, as ``float32``, in one pass.

    Args:
        adc: array ``(rows, ticks)``, raw ADC counts (any numeric dtype).
        ped: array ``(rows,)``, pedestal per row in ADC counts.

    Returns:
        new ``float32`` array ``(rows, ticks)``, ADC counts above pedestal.
    """
    a = _as_2d(adc)
    p = np.asarray(ped, dtype=np.float32)
    if p.shape != (a.shape[0],):
        raise ValueError(f"pedestal shape {p.shape} does not match {a.shape[0]} rows")
    return np.subtract(a, p[:, None], dtype=np.float32)


def _group_flags(
    rms: np.ndarray, groups: np.ndarray | None, rule: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    values = np.asarray(rms, dtype=np.float64)
    keys = np.zeros(values.shape, dtype=np.int64) if groups is None else np.asarray(groups)
    flags = np.zeros(values.shape, dtype=bool)
    for key in np.unique(keys):
        sel = keys == key
        flags[sel] = rule(values[sel])
    return flags


def flag_dead(
    rms: np.ndarray, groups: np.ndarray | None = None, *, ratio: float = 0.3
) -> np.ndarray:
    """Dead or stuck channels: noise RMS far below the median of their group.

    A channel whose ADC never changes has a robust RMS of 0; a disconnected one keeps only the
    small electronics noise, well under the noise seen by a wire. Both fall below ``ratio``
    times the median RMS of the channels of the same group (plane, or APA and plane).

    Args:
        rms: array ``(n,)``, robust RMS per channel in ADC counts.
        groups: array ``(n,)`` of group keys (e.g. the plane code), or None for one group.
        ratio: a channel is dead if its RMS is below ``ratio`` times the group median.

    Returns:
        bool array ``(n,)``, True for dead channels.
    """

    def rule(v: np.ndarray) -> np.ndarray:
        return (v <= 0) | (v < ratio * np.median(v))

    return _group_flags(rms, groups, rule)


def flag_noisy(
    rms: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_mad: float = 8.0,
    min_ratio: float = 1.3,
    dead: np.ndarray | None = None,
) -> np.ndarray:
    """Noisy channels: noise RMS far above the median of their group.

    Robust criterion: the RMS exceeds the group median by more than ``n_mad`` times the
    normalised median absolute deviation (1.4826 MAD, the standard deviation for Gaussian
    spreads) *and* by at least the factor ``min_ratio``, so that a group of near-identical
    channels (tiny MAD) does not flag channels a few percent above the rest. Dead channels are
    left out of the median and MAD.

    Args:
        rms: array ``(n,)``, robust RMS per channel in ADC counts.
        groups: array ``(n,)`` of group keys, or None for one group.
        n_mad: threshold in units of the normalised MAD.
        min_ratio: minimum ratio RMS / group median for a noisy channel.
        dead: bool array ``(n,)`` of channels to leave out of the reference, or None.

    Returns:
        bool array ``(n,)``, True for noisy channels.
    """
    values = np.asarray(rms, dtype=np.float64)
    keys = np.zeros(values.shape, dtype=np.int64) if groups is None else np.asarray(groups)
    excluded = np.zeros(values.shape, bool) if dead is None else np.asarray(dead, bool)
    flags = np.zeros(values.shape, dtype=bool)
    for key in np.unique(keys):
        sel = keys == key
        ref = values[sel & ~excluded]
        if ref.size == 0:
            continue
        med = np.median(ref)
        spread = 1.4826 * np.median(np.abs(ref - med))
        cut = max(med + n_mad * spread, min_ratio * med)
        flags[sel] = (values[sel] > cut) & ~excluded[sel]
    return flags


def signal_mask(
    x: np.ndarray, rms: np.ndarray, *, n_sigma: float = 4.0, pad: int = 10
) -> np.ndarray:
    """Samples that may carry signal: ``|x| > n_sigma * rms``, widened by ``pad`` ticks.

    Args:
        x: ``float32`` array ``(rows, ticks)``, pedestal-subtracted ADC counts.
        rms: array ``(rows,)``, noise RMS per row in ADC counts.
        n_sigma: threshold in units of the row's RMS.
        pad: ticks added on each side of every sample above threshold (covers the rising and
            falling edges of a pulse, below threshold but still signal).

    Returns:
        bool array ``(rows, ticks)``.
    """
    thr = (n_sigma * np.asarray(rms, dtype=np.float32))[:, None]
    above = np.abs(x) > thr
    if pad <= 0:
        return above
    wide = maximum_filter1d(above.view(np.uint8), size=2 * pad + 1, axis=1, mode="constant")
    return wide.view(bool)


def masked_median(
    x: np.ndarray, mask: np.ndarray | None = None, *, min_rows: int = 1, fill: float = 0.0
) -> np.ndarray:
    """Median over rows, tick by tick, of the samples not masked.

    Args:
        x: float array ``(rows, ticks)``.
        mask: bool array ``(rows, ticks)``, True for samples to leave out, or None.
        min_rows: ticks with fewer unmasked samples than this get ``fill``.
        fill: value for those ticks (e.g. ``nan`` to interpolate them later).

    Returns:
        ``float32`` array ``(ticks,)``.
    """
    a = _as_2d(x)
    if mask is None:
        return np.median(a, axis=0).astype(np.float32)
    # Masked samples become +inf so that a sort puts them last; then the median of the n
    # valid samples sits at positions (n - 1) // 2 and n // 2 of each sorted column.
    t = np.ascontiguousarray(np.where(mask, np.float32(np.inf), a).T, dtype=np.float32)
    t.sort(axis=1)
    n = a.shape[0] - mask.sum(axis=0)
    lo = np.clip((n - 1) // 2, 0, a.shape[0] - 1)
    hi = np.clip(n // 2, 0, a.shape[0] - 1)
    ticks = np.arange(a.shape[1])
    med = 0.5 * (t[ticks, lo] + t[ticks, hi])
    med[n < max(min_rows, 1)] = fill
    return med.astype(np.float32)


def coherent_noise(
    x: np.ndarray,
    rms: np.ndarray,
    *,
    n_sigma: float = 4.0,
    pad: int = 10,
    min_rows: int = 4,
) -> np.ndarray:
    """Coherent noise waveform of a group of channels (one fiber, one plane).

    Two passes: a plain median over channels gives a first estimate; samples above
    ``n_sigma`` noise RMS before *or* after subtracting it are treated as signal (before, so
    that a track crossing most channels at the same tick is not taken for noise; after, so
    that small pulses hidden by the noise are caught), widened by ``pad`` ticks, and the median
    is taken again without them.

    Args:
        x: ``float32`` array ``(rows, ticks)``, pedestal-subtracted ADC counts of good
            channels only.
        rms: array ``(rows,)``, noise RMS of each row in ADC counts (with the coherent noise).
        n_sigma: signal threshold in units of RMS.
        pad: signal protection margin in ticks.
        min_rows: ticks with fewer unprotected channels than this (a track crossing most
            channels at once) get the coherent noise interpolated from the ticks around.

    Returns:
        ``float32`` array ``(ticks,)``, ADC counts to subtract from every channel of the group.
    """
    if x.shape[0] == 0:
        return np.zeros(x.shape[1], dtype=np.float32)
    first = np.median(x, axis=0).astype(np.float32)
    residual = x - first
    rms_res = np.maximum(robust_rms_float(residual, step=2), 1e-3)
    rms_raw = np.maximum(np.asarray(rms, dtype=np.float32), 1e-3)
    mask = signal_mask(x, rms_raw, n_sigma=n_sigma, pad=pad)
    mask |= signal_mask(residual, rms_res, n_sigma=n_sigma, pad=pad)
    cn = masked_median(x, mask, min_rows=min_rows, fill=np.nan)
    return _fill_gaps(cn)


def _fill_gaps(y: np.ndarray) -> np.ndarray:
    """Replace NaN samples of a 1-D waveform by linear interpolation (0 if all are NaN)."""
    bad = np.isnan(y)
    if not bad.any():
        return y
    if bad.all():
        return np.zeros_like(y)
    ticks = np.arange(y.size)
    y[bad] = np.interp(ticks[bad], ticks[~bad], y[~bad])
    return y


def remove_coherent_noise(
    x: np.ndarray,
    plane: np.ndarray,
    rms: np.ndarray,
    *,
    good: np.ndarray | None = None,
    n_sigma: float = 4.0,
    pad: int = 10,
    inplace: bool = False,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Subtract, per plane, the coherent noise of a fiber block from its good channels.

    Args:
        x: ``float32`` array ``(rows, ticks)``, pedestal-subtracted ADC counts of one fiber.
        plane: int array ``(rows,)``, plane code of each row (0 = U, 1 = V, 2 = X).
        rms: array ``(rows,)``, noise RMS of each row in ADC counts.
        good: bool array ``(rows,)``, False for dead channels (neither used nor corrected);
            None means all good.
        n_sigma: signal-protection threshold in units of RMS (see :func:`coherent_noise`).
        pad: signal-protection margin in ticks.
        inplace: modify ``x`` instead of returning a copy.

    Returns:
        ``(cleaned, noise)``: the ``float32`` block ``(rows, ticks)`` and, per plane code
        present, the ``float32`` coherent-noise waveform ``(ticks,)`` that was subtracted.
    """
    a = _as_2d(x)
    out = a if inplace else a.astype(np.float32, copy=True)
    plane = np.asarray(plane)
    ok = np.ones(a.shape[0], bool) if good is None else np.asarray(good, bool)
    rms = np.asarray(rms, dtype=np.float32)
    noise: dict[int, np.ndarray] = {}
    for p in np.unique(plane):
        rows = np.flatnonzero((plane == p) & ok)
        cn = coherent_noise(out[rows], rms[rows], n_sigma=n_sigma, pad=pad)
        out[rows] -= cn
        noise[int(p)] = cn
    return out, noise


@dataclass(frozen=True)
class PreparedBlock:
    """One fiber block after data preparation.

    Attributes:
        pedestal: ``float32`` ``(rows,)``, median ADC per channel.
        rms: ``float32`` ``(rows,)``, robust noise RMS per channel before coherent-noise
            removal, ADC counts.
        dead: bool ``(rows,)``, channels found dead in this block.
        waveforms: ``float32`` ``(rows, ticks)``, pedestal-subtracted, coherent-noise-free
            ADC counts (dead channels only pedestal-subtracted).
        coherent: per plane code, the ``float32`` ``(ticks,)`` coherent noise removed.
    """

    pedestal: np.ndarray
    rms: np.ndarray
    dead: np.ndarray
    waveforms: np.ndarray
    coherent: dict[int, np.ndarray]


def prepare_block(
    adc: np.ndarray,
    plane: np.ndarray,
    *,
    dead: np.ndarray | None = None,
    n_sigma: float = 4.0,
    pad: int = 10,
) -> PreparedBlock:
    """Full preparation of one fiber block: pedestal, noise, coherent-noise removal.

    Args:
        adc: integer array ``(rows, ticks)``, raw ADC counts of one fiber and event.
        plane: int array ``(rows,)``, plane code per row.
        dead: bool array ``(rows,)`` of known dead channels, or None to find them in this
            block with :func:`flag_dead` per plane.
        n_sigma: signal-protection threshold in units of RMS.
        pad: signal-protection margin in ticks.

    Returns:
        a :class:`PreparedBlock`.
    """
    ped, rms = pedestal_and_rms(adc)
    is_dead = flag_dead(rms, plane) if dead is None else np.asarray(dead, bool)
    x = subtract_pedestal(adc, ped)
    x, cn = remove_coherent_noise(
        x, plane, rms, good=~is_dead, n_sigma=n_sigma, pad=pad, inplace=True
    )
    return PreparedBlock(pedestal=ped, rms=rms, dead=is_dead, waveforms=x, coherent=cn)
