"""A stored histogram beside the reference run's: what the content pages overlay.

The reference run of a payload is kept in the DQM catalog (``p3s dqm reference set``); its
histograms are read from the ``<payload>.root`` product of its first subrun.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from p3s.dqm.catalog import Catalog
from p3s.dqm.quality import root_product_url

__all__ = ["Overlay", "overlay", "read_histogram"]


@dataclass(frozen=True)
class Overlay:
    """One 1-D histogram of a run and, where set and stored, the reference run's.

    Attributes:
        key: the histogram's path in the ROOT product (``apa1/fiber021/profiled_fft``).
        edges: bin edges, ``numpy.ndarray`` of n+1 floats; xlabel: the axis title.
        values: n bin contents of the run; reference: of the reference run (or None).
    """

    key: str
    run: int
    subrun: int
    edges: np.ndarray
    values: np.ndarray
    xlabel: str
    title: str
    reference_run: int | None = None
    reference: np.ndarray | None = None


def read_histogram(url: str, key: str) -> tuple[np.ndarray, np.ndarray, str, str] | None:
    """(edges, values, x axis title, histogram title) of one 1-D histogram, None if absent."""
    import uproot

    from p3s.files.storage import filesystem

    fs, path = filesystem(url)
    with fs.open(path, "rb") as handle:
        data = handle.read()
    import io

    with uproot.open(io.BytesIO(data)) as root:
        if key not in root:
            return None
        h = root[key]
        if len(h.axes) != 1:
            return None
        axis = h.axis()
        return (
            np.asarray(axis.edges(flow=False)),
            np.asarray(h.values(flow=False)),
            str(axis.all_members.get("fTitle", "") or ""),
            str(h.all_members.get("fTitle", "") or key),
        )


def overlay(catalog: Catalog, run: int, subrun: int, payload: str, key: str) -> Overlay | None:
    """The histogram ``key`` of a run's ``payload`` product and the reference run's."""
    own_url = None
    for product in catalog.products(run, payload):
        if product["subrun"] == subrun and product["name"] == f"{payload}.root":
            own_url = str(product["url"])
    if own_url is None:
        return None
    own = read_histogram(own_url, key)
    if own is None:
        return None
    edges, values, xlabel, title = own
    ref_run = catalog.reference_run(payload)
    ref_values = None
    if ref_run is not None:
        ref_url = root_product_url(catalog, ref_run, payload)
        ref = read_histogram(ref_url, key) if ref_url else None
        if ref is not None and ref[1].shape == values.shape:
            ref_values = ref[1]
        else:
            ref_run = None
    return Overlay(key, run, subrun, edges, values, xlabel, title, ref_run, ref_values)
