"""The result every DQM payload returns, and how it is written to disk.

A payload (``tpc_monitor``, ``purity``, ``evdisplay``, ``beam``) returns one
:class:`PayloadResult`. :meth:`PayloadResult.write` turns it into the files a flow stages out:

=========================  ==========================================================
``{payload}.root``         every histogram, written with uproot; ``"a/b"`` names become
                           ROOT directory ``a`` holding histogram ``b``
``{name}.png``             one per figure, ``/`` in the name replaced by ``_``
``{name}.csv``             one per table, same renaming
``summary.json``           payload, run, subrun, summary and the list of product files
=========================  ==========================================================

Each file is first written under a hidden temporary name in the output folder and then renamed,
so a reader never sees a half-written product. Figures are plain
:class:`matplotlib.figure.Figure` objects (no pyplot, so nothing global is touched).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np
import pandas
import uproot
from matplotlib._pylab_helpers import Gcf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .paths import products_dir, safe_name

__all__ = ["PayloadResult", "new_figure", "products_dir", "safe_name"]

SUMMARY_FILE = "summary.json"


def new_figure(width_in: float = 6.4, height_in: float = 4.8, dpi: int = 100) -> Figure:
    """Return a Figure with an Agg canvas, built without pyplot.

    Args:
        width_in: width in inches.
        height_in: height in inches.
        dpi: resolution in dots per inch used when saved.
    """
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` on success."""
    # A fresh unique name (not mkstemp) so the file gets the usual umask-derived mode.
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_atomic(final: Path, writer: Callable[[Path], None]) -> Path:
    with _atomic_path(final) as tmp:
        writer(tmp)
    return final


def _root_writable(histogram: hist.Hist) -> hist.Hist:
    """Return ``histogram``, or a Double-storage copy where uproot cannot write the storage.

    uproot writes Double and Weight storages; integer storages (Int64, AtomicInt64, Unlimited)
    are copied into Double with the same values, flow bins included.
    """
    if not isinstance(histogram, hist.Hist):
        raise TypeError(f"cannot write {type(histogram).__name__} to ROOT: not a hist.Hist")
    if isinstance(histogram.storage_type(), hist.storage.Double | hist.storage.Weight):
        return histogram
    copy = hist.Hist(*histogram.axes, storage=hist.storage.Double(), label=histogram.label)
    copy.view(flow=True)[...] = np.asarray(histogram.values(flow=True), dtype=np.float64)
    return copy


@dataclass
class PayloadResult:
    """What a DQM payload produced for one raw file.

    Attributes:
        payload: payload name: ``"tpc_monitor"``, ``"purity"``, ``"evdisplay"``, ``"beam"``.
        run: run number of the input file.
        subrun: subrun number of the input file.
        summary: JSON-serialisable key numbers (numpy scalars are converted on write).
        histograms: ``hist.Hist`` objects by name; ``"fiber03/persistent_fft"`` is histogram
            ``persistent_fft`` in ROOT directory ``fiber03``.
        tables: pandas DataFrames by name, written as CSV.
        figures: matplotlib Figures by name, written as PNG and closed.
    """

    payload: str
    run: int
    subrun: int
    summary: dict[str, Any]
    histograms: dict[str, hist.Hist] = field(default_factory=dict)
    tables: dict[str, pandas.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)

    def write(self, outdir: str | os.PathLike[str]) -> list[Path]:
        """Write every product into ``outdir`` (created if needed) and return their paths.

        The order is: the ROOT file (if any histogram), the PNGs, the CSVs, then
        ``summary.json`` last, so its presence means the other products are complete.
        """
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        if self.histograms:
            paths.append(_write_atomic(out / f"{safe_name(self.payload)}.root", self._write_root))
        paths.extend(self._write_figures(out))
        for name, table in self.tables.items():
            paths.append(
                _write_atomic(
                    out / f"{safe_name(name)}.csv", lambda p, t=table: t.to_csv(p, index=False)
                )
            )
        paths.append(_write_atomic(out / SUMMARY_FILE, lambda p: self._write_summary(p, paths)))
        return paths

    def _write_root(self, path: Path) -> None:
        with uproot.recreate(path) as root:
            for name, histogram in self.histograms.items():
                key = name.strip("/")
                if not key:
                    raise ValueError(f"histogram name {name!r} is empty")
                root[key] = _root_writable(histogram)

    def _write_figures(self, out: Path) -> list[Path]:
        paths = []
        try:
            for name, fig in self.figures.items():
                if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
                    FigureCanvasAgg(fig)
                paths.append(
                    _write_atomic(
                        out / f"{safe_name(name)}.png",
                        lambda p, f=fig: f.savefig(p, format="png"),
                    )
                )
        finally:
            self.close_figures()
        return paths

    def close_figures(self) -> None:
        """Release the figures' memory (also done by :meth:`write`)."""
        for fig in self.figures.values():
            # Figures created through pyplot are also registered there; drop them too.
            for manager in list(Gcf.get_all_fig_managers()):
                if manager.canvas.figure is fig:
                    Gcf.destroy(manager.num)
            fig.clear()

    def _write_summary(self, path: Path, products: list[Path]) -> None:
        document = {
            "payload": self.payload,
            "run": int(self.run),
            "subrun": int(self.subrun),
            "summary": _jsonable(self.summary),
            "products": [p.name for p in products],
        }
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
