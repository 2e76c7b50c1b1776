"""Event display with data preparation: wire x time images of the first events.

For each of the first ``n_events`` events, APA and plane, two images of wire (in the plane's
wire order) against time:

* ``raw``: the ADC counts as read, less the plane's median pedestal (channel pedestal
  differences, noise and coherent noise all visible);
* ``prepared``: after :mod:`p3s.payloads.dataprep` (pedestal subtraction per channel and
  coherent-noise removal per fiber and plane).

Events are read one fiber at a time and each APA is drawn as soon as its fibers are in, so
one APA of one event is held at a time. Images are pooled in time to ``time_bins`` columns
keeping the sample of largest magnitude in each group of ticks, so a one-tick hit survives
and a bipolar induction pulse keeps both lobes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import hist
import numpy as np

from . import dataprep
from .products import PayloadResult, new_figure
from .rawformat import Geometry, RawFile, open_raw

__all__ = ["PlaneImage", "analyse", "apa_images", "pool_ticks"]

PAYLOAD = "evdisplay"
PLANE_NAMES = ("U", "V", "X")
TIME_BINS = 500
"""Default image width in time bins."""
OCCUPANCY_SIGMA = 5.0
"""A sample counts towards a wire's occupancy above this many noise RMS."""
COLOUR_RANGE = {
    ("raw", 0): (-40.0, 40.0),
    ("raw", 1): (-40.0, 40.0),
    ("raw", 2): (-30.0, 60.0),
    ("prepared", 0): (-30.0, 30.0),
    ("prepared", 1): (-30.0, 30.0),
    ("prepared", 2): (-10.0, 50.0),
}
"""Colour scale of each image kind and plane [ADC]."""


def pool_ticks(x: np.ndarray, n_bins: int) -> tuple[np.ndarray, int]:
    """Reduce the time axis to at most ``n_bins`` columns, keeping the largest |sample|.

    Args:
        x: array ``(rows, ticks)``.
        n_bins: maximum number of columns.

    Returns:
        ``(pooled, ticks_per_bin)``: ``float32`` ``(rows, ceil(ticks / ticks_per_bin))``;
        the last column may pool fewer ticks.
    """
    rows, ticks = x.shape
    k = max(1, -(-ticks // max(n_bins, 1)))
    if k == 1:
        return x.astype(np.float32, copy=False), 1
    n = -(-ticks // k)
    padded = np.zeros((rows, n * k), dtype=np.float32)
    padded[:, :ticks] = x
    groups = padded.reshape(rows, n, k)
    pick = np.abs(groups).argmax(axis=2)
    return np.take_along_axis(groups, pick[:, :, None], axis=2)[:, :, 0], k


@dataclass(frozen=True)
class PlaneImage:
    """One plane of one APA in one event.

    Attributes:
        event: event index; apa: APA index; plane: plane code (0 = U, 1 = V, 2 = X).
        wires: ``(n_wires,)`` wire index of each image row.
        raw: ``float32`` ``(n_wires, ticks)``, raw ADC less the plane's median pedestal.
        prepared: ``float32`` ``(n_wires, ticks)``, prepared waveforms [ADC].
        dead: bool ``(n_wires,)``, channels found dead by the data preparation.
        rms: ``float32`` ``(n_wires,)``, robust noise RMS of each channel before coherent-noise
            removal [ADC].
    """

    event: int
    apa: int
    plane: int
    wires: np.ndarray
    raw: np.ndarray
    prepared: np.ndarray
    dead: np.ndarray
    rms: np.ndarray

    def occupancy(self, n_sigma: float = OCCUPANCY_SIGMA) -> np.ndarray:
        """Samples per wire with ``|prepared| > n_sigma * rms`` (int64 ``(n_wires,)``)."""
        thr = n_sigma * np.where(self.dead, np.inf, self.rms)[:, None]
        return np.count_nonzero(np.abs(self.prepared) > thr, axis=1)

    def name(self, kind: str) -> str:
        """Product name, e.g. ``evt000000/apa0/plane2_prepared``."""
        return f"evt{self.event:06d}/apa{self.apa}/plane{self.plane}_{kind}"


@dataclass
class _ApaBuffer:
    rows: np.ndarray  # geometry rows of the APA, ordered by plane then wire
    slot: dict[int, int]  # geometry row -> position in the buffer
    raw: np.ndarray  # float32 (n, ticks)
    prepared: np.ndarray
    dead: np.ndarray
    rms: np.ndarray
    pending: set[int]


def _apa_order(geo: Geometry, apa: int) -> np.ndarray:
    rows = geo.rows_where(apa=apa)
    return rows[np.lexsort((geo.wire[rows], geo.plane[rows]))]


def apa_images(raw: RawFile, i: int) -> Iterator[PlaneImage]:
    """Yield the :class:`PlaneImage` of every APA and plane of event ``i``.

    Each fiber block is prepared with :func:`p3s.payloads.dataprep.prepare_block`; an APA's
    images are yielded once all its fibers are read, and then released.
    """
    geo = raw.geometry
    apa_of_fiber = {int(f): int(geo.apa[geo.rows_of_fiber(int(f))][0]) for f in geo.fibers}
    buffers: dict[int, _ApaBuffer] = {}
    for fiber, rows, block in raw.iter_fibers(i):
        apa = apa_of_fiber[fiber]
        if apa not in buffers:
            order = _apa_order(geo, apa)
            n = order.size
            buffers[apa] = _ApaBuffer(
                order,
                {int(r): s for s, r in enumerate(order)},
                np.empty((n, raw.n_ticks), np.float32),
                np.empty((n, raw.n_ticks), np.float32),
                np.zeros(n, bool),
                np.zeros(n, np.float32),
                {f for f, a in apa_of_fiber.items() if a == apa},
            )
        buf = buffers[apa]
        row_ids = np.arange(geo.n_channels)[rows]
        slots = np.array([buf.slot[int(r)] for r in row_ids])
        prep = dataprep.prepare_block(block, geo.plane[row_ids])
        buf.raw[slots] = block
        buf.prepared[slots] = prep.waveforms
        buf.dead[slots] = prep.dead
        buf.rms[slots] = prep.rms
        buf.pending.discard(fiber)
        if not buf.pending:
            yield from _plane_images(geo, i, apa, buffers.pop(apa))


def _plane_images(geo: Geometry, event: int, apa: int, buf: _ApaBuffer) -> Iterator[PlaneImage]:
    planes = geo.plane[buf.rows]
    for plane in np.unique(planes):
        sel = planes == plane
        raw = buf.raw[sel]
        raw -= np.median(raw[~buf.dead[sel]]) if (~buf.dead[sel]).any() else 0.0
        yield PlaneImage(
            event=event,
            apa=apa,
            plane=int(plane),
            wires=geo.wire[buf.rows[sel]],
            raw=raw,
            prepared=buf.prepared[sel],
            dead=buf.dead[sel],
            rms=buf.rms[sel],
        )


def _figure(image: np.ndarray, wires: np.ndarray, t_max_us: float, kind: str, img: PlaneImage):
    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    vmin, vmax = COLOUR_RANGE[(kind, img.plane)]
    mesh = ax.imshow(
        image.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="viridis" if img.plane == 2 else "RdBu_r",
        vmin=vmin,
        vmax=vmax,
        extent=(wires[0] - 0.5, wires[-1] + 0.5, 0.0, t_max_us),
    )
    fig.colorbar(mesh, ax=ax, label="ADC" if kind == "prepared" else "ADC - median pedestal")
    ax.set_xlabel(f"wire ({PLANE_NAMES[img.plane]} plane)")
    ax.set_ylabel("time [us]")
    ax.set_title(f"event {img.event}, APA {img.apa}, plane {PLANE_NAMES[img.plane]}: {kind}")
    return fig


def _histogram(image: np.ndarray, wires: np.ndarray, t_max_us: float, name: str) -> hist.Hist:
    h = hist.Hist(
        hist.axis.Regular(
            wires.size, wires[0] - 0.5, wires[0] + wires.size - 0.5, name="wire", label="wire"
        ),
        hist.axis.Regular(image.shape[1], 0.0, t_max_us, name="time", label="time [us]"),
        storage=hist.storage.Double(),
        label=name,
    )
    h.view()[...] = image
    return h


def _occupancy_histogram(img: PlaneImage) -> hist.Hist:
    w = img.wires
    h = hist.Hist(
        hist.axis.Regular(w.size, w[0] - 0.5, w[0] + w.size - 0.5, name="wire", label="wire"),
        storage=hist.storage.Double(),
        label=f"samples above {OCCUPANCY_SIGMA:g} RMS per wire",
    )
    h.view()[...] = img.occupancy()
    return h


def analyse(
    raw: RawFile | str | os.PathLike[str],
    *,
    n_events: int = 5,
    time_bins: int = TIME_BINS,
    histograms: bool = False,
) -> PayloadResult:
    """Run the event display with data preparation on the first events of a raw file.

    Args:
        raw: an open :class:`~p3s.payloads.rawformat.RawFile`, or a path to open (and close).
        n_events: events to display (``P3S_NEVENTS`` in p3s); fewer if the file has fewer.
        time_bins: image width in time bins (see :func:`pool_ticks`).
        histograms: also return every image as a 2-D histogram (wire x time [us]); off by
            default, as a full event makes 36 of them of up to 960 x ``time_bins`` bins.

    Returns:
        :class:`~p3s.payloads.products.PayloadResult` named ``"evdisplay"`` with figures
        ``evt{event:06d}/apa{a}/plane{p}_raw`` and ``..._prepared``, histograms
        ``evt{event:06d}/apa{a}/plane{p}_occupancy`` (samples above 5 noise RMS per wire after
        data preparation) and, if asked, the images under the figures' names; the summary
        lists the images with their event, APA, plane, kind, wire range, dead channels and the
        largest prepared signal [ADC].
    """
    if not isinstance(raw, RawFile):
        with open_raw(raw) as opened:
            return analyse(opened, n_events=n_events, time_bins=time_bins, histograms=histograms)
    n = min(int(n_events), raw.n_events)
    if n <= 0:
        raise ValueError(f"{raw.path}: no event to display (n_events={n_events})")
    figures, hists, listing = {}, {}, []
    for i in range(n):
        for img in apa_images(raw, i):
            hists[img.name("occupancy")] = _occupancy_histogram(img)
            for kind, data in (("raw", img.raw), ("prepared", img.prepared)):
                pooled, k = pool_ticks(data, time_bins)
                t_max_us = pooled.shape[1] * k * raw.tick_us
                name = img.name(kind)
                figures[name] = _figure(pooled, img.wires, t_max_us, kind, img)
                if histograms:
                    hists[name] = _histogram(pooled, img.wires, t_max_us, name)
                listing.append(
                    {
                        "name": name,
                        "event": i,
                        "apa": img.apa,
                        "plane": PLANE_NAMES[img.plane],
                        "kind": kind,
                        "wires": [int(img.wires.min()), int(img.wires.max())],
                        "n_dead": int(img.dead.sum()),
                        "max_adc": float(np.max(np.abs(data[~img.dead]), initial=0.0)),
                    }
                )
    summary = {"n_events": n, "time_bins": time_bins, "images": listing}
    return PayloadResult(
        payload=PAYLOAD,
        run=raw.run,
        subrun=raw.subrun,
        summary=summary,
        histograms=hists,
        figures=figures,
    )
